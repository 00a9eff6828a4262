"""Acceptance: what a master keeps doing — GARP bursts, VIP re-checks, notify hooks."""

from __future__ import annotations

import signal
import sys

import pytest

from vrrp.lab import HOSTS, VIP, wait_until
from vrrp.netns import run_ip

pytestmark = pytest.mark.netns

A_MAC = HOSTS["a"][1]


def test_garp_bursts_and_refresh(lab):
    sniff = lab.sniffer()
    try:
        a = lab.start_agent("a", wait_state="MASTER", garp_repeat_delay_s=0.5,
                            garp_refresh_s=1.0, garp_burst_count=3)
        became = a.status()["vip_add_monotonic_s"]
        wait_until(lambda: len(sniff.garps(became)) >= 9, 3)
        times = [t - became for t, g in sniff.garps(became) if g.sender_mac == A_MAC]
    finally:
        sniff.close()
    assert len(times) >= 9, times
    assert all(t < 0.05 for t in times[:3])  # the burst at the transition
    assert all(0.45 < t < 0.6 for t in times[3:6])  # the repeat burst
    assert all(0.95 < t < 1.1 for t in times[6:9])  # the first refresh


def test_vip_removed_behind_the_masters_back_is_restored(lab):
    a = lab.start_agent("a", wait_state="MASTER", vip_check_interval_s=0.2)
    garps = a.status()["garps_sent"]
    run_ip("-n", lab.ns("a"), "addr", "del", f"{VIP}/24", "dev", "eth0")
    assert not lab.has_vip("a")
    wait_until(lambda: lab.has_vip("a"), 2)
    wait_until(lambda: a.status()["garps_sent"] > garps, 2)  # and re-announced
    assert a.status()["state"] == "MASTER"


def test_notify_hooks_see_every_transition(lab):
    log = lab.dir / "hooks.log"
    hook = [sys.executable, "-c",
            f"import sys; open({str(log)!r}, 'a').write(sys.argv[1] + '\\n')"]
    a = lab.start_agent("a", wait_state="MASTER", notify_commands=[hook])
    wait_until(lambda: log.exists() and log.read_text().split() == ["BACKUP", "MASTER"], 5)
    a.kill(signal.SIGTERM)
    assert a.proc.wait(10) == 0
    assert log.read_text().split() == ["BACKUP", "MASTER", "INITIALIZE"]
