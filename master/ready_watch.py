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


class ReadyWatch:
    """The last /ready call, and an event set once one was answered 'draining'."""

    def __init__(self):
        self.last_probe_at: float | None = None  # monotonic s
        self.told_draining = asyncio.Event()

    def probed(self, draining: bool) -> None:
        self.last_probe_at = time.monotonic()
        if draining:
            self.told_draining.set()

    def watched(self) -> bool:
        return (self.last_probe_at is not None
                and time.monotonic() - self.last_probe_at < WATCHED_S)

    async def wait_told(self, timeout_s: float) -> bool:
        """If a health checker is watching, wait up to timeout_s until it has been told;
        returns whether it was (False also when nobody watches)."""
        if self.told_draining.is_set() or not self.watched():
            return self.told_draining.is_set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.told_draining.wait(), max(0.0, timeout_s))
        return self.told_draining.is_set()
