"""Failover drills on the namespace lab: elect a master, kill it, time the handover.

Times are monotonic and measured from the moment of the kill to the first gratuitous ARP
for the VIP from the new master that reaches the client's interface.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from vrrp.lab import HOSTS, VIP, AgentProc, Lab, wait_until

MAC = {host: mac for host, (_, mac) in HOSTS.items()}


def skew_s(priority: int, advert_s: float) -> float:
    return (256 - priority) * advert_s / 256


def master_down_s(priority: int, advert_s: float) -> float:
    return 3 * advert_s + skew_s(priority, advert_s)


@dataclass(frozen=True)
class Handover:
    """One measured failover from A to B."""

    outage_s: float  # kill -> B's first GARP at the client
    garp_after_vip_s: float  # B asked the kernel to add the VIP -> that GARP at the client
    client_mac: str  # the client's neighbour entry for the VIP afterwards


def elect(lab: Lab, a_settings: dict | None = None,
          b_settings: dict | None = None) -> tuple[AgentProc, AgentProc]:
    """Start A (150) and B (100) with web servers; return once A is master and the client
    reaches the VIP through it."""
    lab.start_web("a")
    lab.start_web("b")
    a = lab.start_agent("a", **(a_settings or {}))
    b = lab.start_agent("b", **(b_settings or {}))
    wait_until(lambda: a.status().get("state") == "MASTER" and
               b.status().get("master_ip") == HOSTS["a"][0], 10)
    if lab.http_get("c", VIP, "/whoami") != "a" or lab.neigh_mac("c") != MAC["a"]:
        raise AssertionError("client does not reach A through the VIP")
    return a, b


def handover(lab: Lab, sig: int = signal.SIGKILL) -> Handover:
    """Kill the master A with `sig` and time B's takeover as the client sees it."""
    a, b = lab.agents["a"], lab.agents["b"]
    sniff = lab.sniffer()
    try:
        killed = a.kill(sig)
        garp = sniff.wait_for(lambda: sniff.first_garp(MAC["b"], VIP, killed), 5)
    finally:
        sniff.close()
    if garp is None:
        raise AssertionError(f"no GARP from B after the kill:\n{b.log()}")
    a.proc.wait(5)
    wait_until(lambda: lab.neigh_mac("c") == MAC["b"], 2)
    wait_until(lambda: b.status().get("vip_add_monotonic_s", 0) > killed, 2)
    added = b.status()["vip_add_monotonic_s"]
    return Handover(garp - killed, garp - added, lab.neigh_mac("c"))
