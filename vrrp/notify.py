"""Notify hooks on each transition: commands and/or a POST to a local URL, in order."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import httpx

log = logging.getLogger(__name__)


class Notifier:
    """Runs hooks one transition at a time so listeners never see states out of order."""

    def __init__(self, commands: tuple[tuple[str, ...], ...], url: str, timeout_s: float,
                 vrid: int):
        self.commands = commands
        self.url = url
        self.timeout_s = timeout_s
        self.vrid = vrid
        self._queue: asyncio.Queue[dict] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def notify(self, state: str, old: str, priority: int, reason: str) -> None:
        if not (self.commands or self.url):
            return
        self._queue.put_nowait({"vrid": self.vrid, "state": state, "previous": old,
                                "priority": priority, "reason": reason,
                                "time_unix_s": time.time()})
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain_forever())

    async def _drain_forever(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                for cmd in self.commands:
                    await self._run(cmd, event)
                if self.url:
                    await self._post(event)
            finally:
                self._queue.task_done()

    async def _run(self, cmd: tuple[str, ...], event: dict) -> None:
        env = dict(os.environ, DUET_VRRP_STATE=event["state"], DUET_VRRP_VRID=str(self.vrid),
                   DUET_VRRP_PRIORITY=str(event["priority"]))
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, event["state"], env=env)
        except OSError as exc:
            log.error("notify command %s: %s", cmd[0], exc)
            return
        try:
            rc = await asyncio.wait_for(proc.wait(), self.timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("notify command %s: killed after %.1f s", cmd[0], self.timeout_s)
            return
        if rc:
            log.error("notify command %s exited %d", cmd[0], rc)

    async def _post(self, event: dict) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as client:
                resp = await client.post(self.url, json=event)
            if resp.status_code >= 300:
                log.error("notify POST %s: HTTP %d", self.url, resp.status_code)
        except httpx.HTTPError as exc:
            log.error("notify POST %s: %s", self.url, exc)

    async def flush(self, timeout_s: float) -> None:
        """Wait (bounded) for queued hooks, e.g. the STOP hook at shutdown."""
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except asyncio.TimeoutError:
            log.error("notify hooks still running at exit")
        self._worker.cancel()
