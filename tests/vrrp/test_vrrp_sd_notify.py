"""The agent under systemd's Type=notify: READY=1 once its state machine runs, then WATCHDOG=1
from the loop that sends the advertisements; and init_fail keeps a returning host low."""
import pytest

from vrrp.lab import wait_until

WATCHDOG_S = 1.0


@pytest.mark.netns
def test_agent_says_ready_and_feeds_the_watchdog(lab, notify_listener, monkeypatch):
    for key, value in notify_listener.env(WATCHDOG_S).items():
        monkeypatch.setenv(key, value)  # inherited by the agent started in namespace a
    agent = lab.start_agent("a", wait_state=None)
    ready = notify_listener.wait_for("READY=1", timeout_s=20)[0]
    pings = notify_listener.wait_for("WATCHDOG=1", count=4, timeout_s=20)
    assert pings[-1] > ready and agent.proc.poll() is None
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < WATCHDOG_S, gaps
    wait_until(lambda: agent.status().get("state") == "MASTER", 10)


@pytest.mark.netns
def test_init_fail_starts_low_until_the_api_is_ready(lab):
    """A returning host A whose API is not up yet must not take the VIP from B."""
    ready_file = lab.start_web("a")
    ready_file.unlink()  # A's /ready is 404 until the file exists
    lab.start_web("b")
    health = {"url": "http://127.0.0.1:8080/ready", "interval_s": 0.1, "timeout_s": 0.1,
              "rise": 2, "fall": 2, "weight": -60, "init_fail": True}
    b = lab.start_agent("b")
    wait_until(lambda: b.status().get("state") == "MASTER", 10)
    a = lab.start_agent("a", health=health)
    assert a.status()["priority"] == 90
    wait_until(lambda: a.status().get("state") == "BACKUP", 5)
    assert lab.has_vip("b") and not lab.has_vip("a")
    ready_file.write_text("ok\n")
    wait_until(lambda: a.status().get("state") == "MASTER", 10)
    assert a.status()["priority"] == 150
    wait_until(lambda: lab.has_vip("a") and not lab.has_vip("b"), 5)
