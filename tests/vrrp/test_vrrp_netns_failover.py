"""Acceptance: two real agents and a client on a bridge, each in its own namespace.

Failover is timed from the moment of the kill to the first gratuitous ARP for the VIP
that reaches the client (monotonic clock, AF_PACKET in the client namespace); the client's
neighbour entry must then point at the new master.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from vrrp.drill import MAC, elect, handover, master_down_s, skew_s
from vrrp.lab import HOSTS, VIP, wait_until

pytestmark = pytest.mark.netns

ADVERT_S = 0.1  # the lab's advert interval
TOLERANCE_S = 0.050  # the bound: RFC interval + 50 ms
# Extra room for a loaded 2-core CI box (scheduling of three Python processes); the bench
# records the real numbers. Set VRRP_TIMING_MARGIN_S=0 to assert the bare bound.
MARGIN_S = float(os.environ.get("VRRP_TIMING_MARGIN_S", "0.03"))


def _elect(lab, **kw):
    return elect(lab, kw.get("a"), kw.get("b"))


def test_higher_priority_becomes_master_and_holds_vip(lab):
    a, b = _elect(lab)
    assert lab.has_vip("a") and not lab.has_vip("b")
    assert b.status()["state"] == "BACKUP"
    time.sleep(0.3)
    assert a.status()["adverts_sent"] >= 3 and b.status()["adverts_received"] >= 3
    assert b.status()["adverts_dropped"] == {}


def test_sigkill_master_then_restart_with_preempt(lab):
    a, b = _elect(lab)
    got = handover(lab, signal.SIGKILL)
    assert got.outage_s <= master_down_s(100, ADVERT_S) + TOLERANCE_S + MARGIN_S, got
    assert got.garp_after_vip_s <= 0.010 + MARGIN_S, got
    assert got.client_mac == MAC["b"]
    assert lab.has_vip("b") and lab.http_get("c", VIP, "/whoami") == "b"
    assert lab.has_vip("a")  # SIGKILL left the VIP behind
    a = lab.start_agent("a")
    assert a.status()["stale_vips_removed"] == [f"{VIP}/24"]
    wait_until(lambda: a.status().get("state") == "MASTER", 3)
    wait_until(lambda: b.status().get("state") == "BACKUP" and not lab.has_vip("b"), 3)
    wait_until(lambda: lab.neigh_mac("c") == MAC["a"], 3)
    assert lab.http_get("c", VIP, "/whoami") == "a"


def test_restart_with_nopreempt_stays_backup(lab):
    a, b = _elect(lab)
    a.kill(signal.SIGKILL)
    a.proc.wait()
    wait_until(lambda: b.status().get("state") == "MASTER", 3)
    a = lab.start_agent("a", preempt=False)
    assert a.status()["stale_vips_removed"] == [f"{VIP}/24"] and not lab.has_vip("a")
    time.sleep(1.0)  # well past A's Master_Down_Interval
    assert a.status()["state"] == "BACKUP" and a.status()["master_ip"] == HOSTS["b"][0]
    assert b.status()["state"] == "MASTER" and not lab.has_vip("a")
    assert lab.http_get("c", VIP, "/whoami") == "b"


def test_sigterm_hands_over_within_skew_time(lab):
    a, b = _elect(lab)
    got = handover(lab, signal.SIGTERM)
    assert a.proc.returncode == 0, a.log()
    assert got.outage_s <= skew_s(100, ADVERT_S) + TOLERANCE_S + MARGIN_S, got
    assert got.client_mac == MAC["b"]
    assert not lab.has_vip("a")
    wait_until(lambda: lab.neigh_mac("c") == MAC["b"], 1)
    assert lab.http_get("c", VIP, "/whoami") == "b"


def _adverts_from(frames, mac: str) -> list[float]:
    src = bytes.fromhex(mac.replace(":", ""))
    return [t for t, f in frames if f[6:12] == src and f[12:14] == b"\x08\x00" and f[23] == 112]


def test_split_brain_heals_within_one_advert_interval(lab):
    """Timed on B's own interface from kernel timestamps: A's first advert to reach B after
    the heal, and B's last advert as master. The protocol's bound: A adverts within one
    interval of the heal, and B (lower priority) stops at once on hearing it."""
    a, b = _elect(lab)
    lab.isolate("a", True)
    lab.isolate("b", True)
    wait_until(lambda: b.status().get("state") == "MASTER", 3)
    assert a.status()["state"] == "MASTER" and lab.has_vip("a") and lab.has_vip("b")
    sniff = lab.sniffer("b")
    try:
        time.sleep(3 * ADVERT_S)  # isolated: B hears nothing of A
        assert _adverts_from(sniff.snapshot(), MAC["a"]) == []
        lab.isolate("a", False)
        healed = time.monotonic()  # A and B can talk from here (one side not isolated)
        lab.isolate("b", False)
        wait_until(lambda: b.status().get("state") == "BACKUP", 3)
        time.sleep(3 * ADVERT_S)  # long enough for B to have advertised again, had it not stopped
        frames = sniff.snapshot()
    finally:
        sniff.close()
    first_from_a = _adverts_from(frames, MAC["a"])[0]
    last_from_b = _adverts_from(frames, MAC["b"])[-1]
    assert first_from_a - healed <= ADVERT_S + MARGIN_S, first_from_a - healed
    # B may have one advert on its way while it handles A's: allow its processing margin
    assert last_from_b <= first_from_a + MARGIN_S, last_from_b - first_from_a
    assert a.status()["state"] == "MASTER"
    wait_until(lambda: not lab.has_vip("b"), 1)
    wait_until(lambda: lab.neigh_mac("c") == MAC["a"], 1)


def test_failing_health_moves_vip_and_recovery_moves_it_back(lab):
    health = {"url": "http://127.0.0.1:8080/ready", "interval_s": 0.05, "timeout_s": 0.2,
              "rise": 2, "fall": 2, "weight": -60}
    a, b = _elect(lab, a={"health": health}, b={"health": health})
    ready = lab.dir / "web-a" / "ready"
    ready.unlink()
    wait_until(lambda: a.status().get("priority") == 90, 3)
    wait_until(lambda: b.status().get("state") == "MASTER" and lab.neigh_mac("c") == MAC["b"], 3)
    wait_until(lambda: a.status().get("state") == "BACKUP" and not lab.has_vip("a"), 1)
    assert lab.http_get("c", VIP, "/whoami") == "b"
    ready.write_text("ok\n")
    wait_until(lambda: a.status().get("state") == "MASTER" and a.status()["priority"] == 150, 3)
    wait_until(lambda: b.status().get("state") == "BACKUP" and lab.neigh_mac("c") == MAC["a"], 3)
    assert lab.http_get("c", VIP, "/whoami") == "a"


def test_a_draining_api_makes_its_agent_resign_at_once(lab):
    """/ready answering "draining" (an API after SIGTERM): a priority-0 advertisement at the
    next probe, so B takes over after its skew time; a failing API would need `fall` probes
    and then B's whole master-down interval."""
    interval_s = 0.2
    health = {"url": "http://127.0.0.1:8080/ready", "interval_s": interval_s,
              "timeout_s": 0.2, "rise": 2, "fall": 3, "weight": -60}
    a, b = _elect(lab, a={"health": health}, b={"health": health})
    web = lab.dir / "web-a"
    sniff = lab.sniffer()
    try:
        (web / "draining").write_text("")
        drained = time.monotonic()
        (web / "ready").unlink()
        garp = sniff.wait_for(lambda: sniff.first_garp(MAC["b"], VIP, drained), 5)
    finally:
        sniff.close()
    assert garp is not None, b.log()
    failing_path_s = (health["fall"] - 1) * interval_s + master_down_s(100, ADVERT_S)
    assert garp - drained < interval_s + skew_s(100, ADVERT_S) + 0.15 < failing_path_s
    assert "FAULT (drain)" in a.log() and a.status()["state"] == "FAULT"
    wait_until(lambda: lab.http_get("c", VIP, "/whoami") == "b", 2)
    (web / "ready").write_text("ok\n")  # the API is back: A preempts again
    wait_until(lambda: a.status().get("state") == "MASTER" and lab.neigh_mac("c") == MAC["a"], 5)


def test_link_down_is_fault_and_recovery_preempts(lab):
    a, b = _elect(lab)
    lab.port("a", up=False)
    wait_until(lambda: a.status().get("state") == "FAULT", 3)
    wait_until(lambda: b.status().get("state") == "MASTER", 3)
    assert not lab.has_vip("a")
    lab.port("a", up=True)
    wait_until(lambda: a.status().get("state") == "MASTER" and b.status()["state"] == "BACKUP", 5)
