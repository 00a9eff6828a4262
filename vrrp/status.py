"""What the agent reports: a JSON status file and Prometheus metrics (own registry)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter as Tally
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from vrrp.state import State

log = logging.getLogger(__name__)


class Status:
    """Counters and the current state, mirrored into metrics and the status file."""

    def __init__(self, vrid: int, status_file: str = ""):
        self.vrid = vrid
        self.path = Path(status_file) if status_file else None
        self.state = State.INITIALIZE
        self.priority = 0
        self.base_priority = 0
        self.master_ip = ""
        self.transitions = 0
        self.adverts_sent = 0
        self.adverts_received = 0
        self.dropped: Tally[str] = Tally()
        self.garps_sent = 0
        self.vip_add_monotonic_s = 0.0  # last transition to MASTER: VIP add requested
        self.first_garp_monotonic_s = 0.0  # ... and when its first GARP left
        self.stale_vips_removed: list[str] = []
        self.registry = CollectorRegistry()
        self._server = None
        lbl = {"registry": self.registry}
        self.m_state = Gauge("vrrp_state", "1 for the current state", ["state"], **lbl)
        self.m_priority = Gauge("vrrp_priority", "Effective priority", **lbl)
        self.m_transitions = Counter("vrrp_transitions", "State transitions", ["to"], **lbl)
        self.m_sent = Counter("vrrp_adverts_sent", "Advertisements sent", **lbl)
        self.m_received = Counter("vrrp_adverts_received", "Valid adverts received", **lbl)
        self.m_dropped = Counter("vrrp_adverts_dropped", "Dropped packets", ["reason"], **lbl)
        self.m_garps = Counter("vrrp_garps_sent", "Gratuitous ARPs sent", **lbl)

    def set_state(self, state: State) -> None:
        if state is not self.state:
            self.transitions += 1
            self.m_transitions.labels(state.value).inc()
        self.state = state
        for s in State:
            self.m_state.labels(s.value).set(1 if s is state else 0)

    def set_priority(self, priority: int) -> None:
        self.priority = priority
        self.m_priority.set(priority)

    def sent(self, n: int = 1) -> None:
        self.adverts_sent += n
        self.m_sent.inc(n)

    def received(self) -> None:
        self.adverts_received += 1
        self.m_received.inc()

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self.m_dropped.labels(reason).inc()

    def garps(self, n: int) -> None:
        self.garps_sent += n
        self.m_garps.inc(n)

    def snapshot(self) -> dict:
        return {
            "vrid": self.vrid, "pid": os.getpid(), "state": self.state.value,
            "priority": self.priority, "base_priority": self.base_priority,
            "master_ip": self.master_ip, "transitions": self.transitions,
            "adverts_sent": self.adverts_sent, "adverts_received": self.adverts_received,
            "adverts_dropped": dict(self.dropped), "garps_sent": self.garps_sent,
            "vip_add_monotonic_s": self.vip_add_monotonic_s,
            "first_garp_monotonic_s": self.first_garp_monotonic_s,
            "stale_vips_removed": self.stale_vips_removed,
            "updated_unix_s": time.time(),
        }

    def write(self) -> None:
        """Replace the status file atomically (readers never see half a file). A failure is
        logged, never raised: reporting must not stop a failover."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.snapshot(), indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("status file %s: %s", self.path, exc)

    def serve_metrics(self, addr: str, port: int) -> None:
        self._server, _thread = start_http_server(port, addr, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
