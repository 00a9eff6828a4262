"""A cold standby API: the head loads when the VRRP agent activates the standby, not at start.

Hot (the default) keeps a second copy of the head in memory on host B all the time; cold
saves that memory and pays the load time at failover. Until the head is loaded and the
worker connected, the API answers 503 with Retry-After and /ready says how far loading got.
Deactivation after that behaves as for a hot standby: running requests finish, new ones get
503; the head stays loaded, so a second promotion is immediate.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import AsyncIterator

from master.generation import GenerationRequest, PipelineUnavailable, TokenEvent
from master.pipeline_generator import NOT_ACTIVE, PipelineGenerator

log = logging.getLogger("duet.master.cold_standby")
LOAD_LOGGER = "duet.engine.load"  # engine/progress.py reports "<what>: NN% (S s)" here
RETRY_AFTER_S = 2.0


class StillLoading(PipelineUnavailable):
    """503 with Retry-After: the standby is active but its head is not loaded yet."""

    def __init__(self, reason: str, retry_after_s: float = RETRY_AFTER_S):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class _LoadShare(logging.Handler):
    """Reads the share loaded from the engine's progress lines while the head loads."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.share = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg.endswith("%% (%.1f s)") and len(args) == 3:
            self.share = max(self.share, float(args[1]) / 100)


class ColdStandby:
    """The Generator of a cold standby: builds the real PipelineGenerator on activation."""

    def __init__(self, build: Callable[[], PipelineGenerator]):
        self._build = build  # loads the head, wires the pipeline; runs in a thread
        self.generator: PipelineGenerator | None = None
        self.active = False
        self._loading: asyncio.Task | None = None
        self._progress = _LoadShare()
        self._started_s = 0.0
        self._error = ""

    @property
    def draining(self) -> bool:
        return self.generator is not None and self.generator.draining

    def readiness(self) -> tuple[bool, str]:
        if self.generator is not None:
            return self.generator.readiness()
        if self._loading is not None:
            return False, (f"cold standby loading the head: {self._progress.share:.0%} after "
                           f"{time.monotonic() - self._started_s:.1f} s")
        if self._error:
            return False, f"cold standby: loading the head failed: {self._error}"
        return True, f"cold standby, head not loaded (loads on activation); {NOT_ACTIVE}"

    def set_active(self, active: bool) -> None:
        self.active = active
        if self.generator is not None:
            self.generator.set_active(active)
        elif active and self._loading is None:
            self._started_s, self._error = time.monotonic(), ""
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        logger = logging.getLogger(LOAD_LOGGER)
        logger.addHandler(self._progress)
        try:
            generator = await asyncio.to_thread(self._build)
        except Exception as e:  # a bad checkpoint: /ready says why; the next activation retries
            self._error = str(e)
            log.error("cold standby: loading the head failed: %s", e)
            return
        finally:
            logger.removeHandler(self._progress)
            self._loading = None
        generator.set_active(self.active)
        generator.start()
        self.generator = generator
        log.warning("cold standby: head loaded in %.1f s", time.monotonic() - self._started_s)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if self.generator is None:
            if not self.active:
                raise PipelineUnavailable(NOT_ACTIVE)
            raise StillLoading(self.readiness()[1])
        ready, reason = self.generator.readiness()
        if not ready and self.active and not self.generator.driver.recovering:  # handshaking
            raise StillLoading(reason)
        async for event in self.generator.generate(request):
            yield event

    def stats(self) -> dict:
        return self.generator.stats() if self.generator is not None else {"head_loaded": False}

    def start(self) -> None:
        """Nothing to start until activation."""

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        if self.generator is not None:
            await self.generator.close()
