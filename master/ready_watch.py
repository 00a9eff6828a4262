"""Who polls /ready, and whether they have been told that this API is draining.

The VRRP agent on the host polls /ready; answered `"draining": true` it resigns at once with a
priority-0 advertisement (vrrp/health.py), so the standby takes new work while this API
finishes its running requests. On SIGTERM the API therefore stays up, after those requests,
until a caller that polled recently has been told: the VIP leaves before the API does, and
not one failed probe (or `fall` of them) later.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

WATCHED_S = 10.0  # a /ready caller seen this recently is a health checker that will call again
LATE_S = 0.5  # slack on top of two of the poller's intervals before it counts as gone


class ReadyWatch:
    """The last /ready calls, and an event set once one was answered 'draining'.

    A health checker is a caller that polls: seen twice, at an interval. A one-off caller (a
    deploy script's readiness check) is not waited for, and a poller is waited for at most
    two of its intervals (plus LATE_S): a gone poller does not hold the exit until the drain
    deadline."""

    def __init__(self):
        self.last_probe_at: float | None = None  # monotonic s
        self.interval_s: float | None = None  # between the last two /ready calls
        self.told_draining = asyncio.Event()

    def probed(self, draining: bool) -> None:
        now = time.monotonic()
        if self.last_probe_at is not None:
            self.interval_s = now - self.last_probe_at
        self.last_probe_at = now
        if draining:
            self.told_draining.set()

    def _expected_by(self) -> float | None:
        """When a watching poller's next call is due at the latest (monotonic s); None if no
        poller watches."""
        if self.last_probe_at is None or self.interval_s is None:
            return None
        if time.monotonic() - self.last_probe_at >= WATCHED_S:
            return None
        return self.last_probe_at + 2 * self.interval_s + LATE_S

    def watched(self) -> bool:
        return self._expected_by() is not None

    async def wait_told(self, timeout_s: float) -> bool:
        """If a health checker is watching, wait until it has been told, up to timeout_s or
        its next call overdue; returns whether it was (False also when nobody watches)."""
        expected_by = self._expected_by()
        if self.told_draining.is_set() or expected_by is None:
            return self.told_draining.is_set()
        wait_s = max(0.0, min(timeout_s, expected_by - time.monotonic()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.told_draining.wait(), wait_s)
        return self.told_draining.is_set()
