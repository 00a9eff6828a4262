"""The faults a drill injects, how each is repaired, and where the VIP should go.

Each scenario starts from a healthy lab (A holds the VIP) and leaves one: after the repair,
host A takes the VIP back (preemption) and every process is ready again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    """One drill: `inject` returns the fault's monotonic time, `repair` the repair's."""

    name: str
    what: str
    moves_vip_to: str  # where the VIP goes after the fault ("" = it stays)
    inject: Callable
    repair: Callable
    prepare: Callable | None = None  # before the clients start (return-a: A is down)
    # Streams pause and complete (recovery_budget_s): the repair follows the fault at once, as
    # a supervisor's restart would, and the streams in flight must end with the usual text.
    pauses: bool = False
    resuming: bool = False  # clients resume with Last-Event-ID (duet/drill/resume_drill.py)


SCENARIOS = {s.name: s for s in (
    Scenario("kill-master", "SIGKILL the master API process on host A; A's health check "
             "lowers its priority and B takes the VIP", "b",
             lambda t: t.kill("master"), lambda t: t.start_dead("a")),
    Scenario("crash-a", "host A crashes: SIGKILL every process on it and its link goes "
             "down at once; repair: it reboots (no VIP) and starts its services", "b",
             lambda t: t.crash("a"), lambda t: t.reboot("a")),
    Scenario("stop-a", "stop host A gracefully (SIGTERM to its API and agent: priority 0 "
             "advertisement)", "b", lambda t: t.stop_host("a"), lambda t: t.start_dead("a")),
    Scenario("cut-a-link", "take host A's link down (its processes keep running)", "b",
             lambda t: t.cut("a"), lambda t: t.reconnect("a")),
    Scenario("kill-worker", "SIGKILL the worker on host B and restart it (systemd's "
             "Restart=): both APIs rebuild their streams on it, clients see a pause", "",
             lambda t: t.kill("worker"), lambda t: t.start_dead("b"), pauses=True),
    Scenario("return-a", "host A comes back after a graceful stop and takes the VIP back "
             "(preemption) once its API is ready", "a",
             lambda t: t.start_dead("a"), lambda t: None,
             prepare=lambda t: (t.stop_host("a"), t.wait_vip_on("b", 30))),
    Scenario("crash-a-resume", "host A crashes while clients stream long completions; they "
             "reconnect through the VIP with Last-Event-ID, B's standby adopts the sequences "
             "from the worker, and every stream must end with the uninterrupted run's text",
             "b", lambda t: t.crash("a"), lambda t: t.reboot("a"), resuming=True),
)}
