"""HTTP checks of the local API's /ready with rise/fall hysteresis.

duet's API answers `{"draining": true}` (with 503) from SIGTERM until it exits: that is not a
failure to confirm over `fall` probes but a notice, so the agent resigns at once (a
priority-0 advertisement) and the standby takes new work before the API is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from vrrp.config import HealthConfig

log = logging.getLogger(__name__)


def effective_priority(base: int, weight: int, healthy: bool) -> int:
    """keepalived's rule: a negative weight applies while failing, a positive one while
    healthy; the owner (255) never moves, others stay within 1..254."""
    if base == 255:
        return 255
    delta = weight if (weight < 0) != healthy else 0
    return max(1, min(254, base + delta))


class HealthCheck:
    """Polls `cfg.url`; calls `on_change(healthy)` after `rise`/`fall` consecutive results."""

    def __init__(self, cfg: HealthConfig, on_change: Callable[[bool], None],
                 on_drain: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.on_change = on_change
        self.on_drain = on_drain
        self.draining = False  # told once per drain; `rise` good probes end it
        # Assumed up at start (a slow first probe moves nothing), unless init_fail says not.
        self.healthy = not cfg.init_fail
        self._streak = 0  # consecutive results that disagree with `healthy`

    async def probe(self, client: httpx.AsyncClient) -> bool | None:
        """True: ready; False: failing; None: the API says it is draining."""
        try:
            resp = await client.get(self.cfg.url)
        except httpx.HTTPError as exc:
            log.debug("health probe %s failed: %s", self.cfg.url, exc)
            return False
        if 200 <= resp.status_code < 300:
            return True
        return None if _says_draining(resp) else False

    def drain(self) -> None:
        """The API drains: failing at once (no `fall` hysteresis); on_drain is called once."""
        self._streak = 0
        if self.draining:
            return
        self.draining = True
        log.warning("health %s: the API is draining", self.cfg.url)
        self.on_drain()
        if self.healthy:
            self.healthy = False
            self.on_change(False)

    def record(self, ok: bool) -> bool:
        """Feed one result; return True when the health state flipped."""
        if ok == self.healthy:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak < (self.cfg.rise if ok else self.cfg.fall):
            return False
        self.healthy, self._streak = ok, 0
        self.draining = self.draining and not ok
        log.warning("health %s: %s", self.cfg.url, "up" if ok else "down")
        self.on_change(ok)
        return True

    async def run(self) -> None:
        timeout = httpx.Timeout(self.cfg.timeout_s)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            while True:
                result = await self.probe(client)
                if result is None:
                    self.drain()
                else:
                    self.record(result)
                await asyncio.sleep(self.cfg.interval_s)


def _says_draining(resp: httpx.Response) -> bool:
    try:
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("draining") is True
