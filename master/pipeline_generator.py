"""The `Generator` the HTTP layer calls: a request becomes a Sequence in the scheduler, and
its tokens come back through the sequence's outbox. The PipelineDriver does the I/O."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import AsyncIterator

from master.generation import GenerationRequest, PipelineUnavailable, TokenEvent, check_request
from master.pipeline_driver import PipelineDriver
from master.scheduler import Scheduler, SchedulerConfig
from master.sequence import Sequence

DRAINING = "the API is draining (SIGTERM): retry through the VIP or another API"
NOT_ACTIVE = ("standby API not active: the API answers 503 until the VRRP agent activates it "
              "(POST /admin/vrrp with state MASTER, or POST /admin/activate)")


class PipelineGenerator:
    """Implements master.generation.Generator over a Head and a PipelineClient."""

    def __init__(self, head, client, config: SchedulerConfig, *, metrics=None,
                 step_timeout_s: float = 120.0, recovery_budget_s: float = 0.0,
                 active: bool = True):
        if step_timeout_s <= 0:
            raise ValueError(f"step_timeout_s must be > 0, got {step_timeout_s!r}")
        self.head, self.client = head, client
        self.scheduler = Scheduler(config)
        self.driver = PipelineDriver(head, client, self.scheduler, metrics=metrics,
                                     step_timeout_s=step_timeout_s,
                                     recovery_budget_s=recovery_budget_s)
        self.active = active  # a standby API answers only once activated
        self.draining = False  # SIGTERM: finish what runs, refuse new requests
        self._task: asyncio.Task | None = None

    def readiness(self) -> tuple[bool, str]:
        """Whether this API could serve: head loaded, worker connected, handshake passed.

        An inactive standby is ready in this sense (the VRRP health check on its host asks
        exactly that); its reason says that the API answers 503 until it is activated.
        """
        ready, reason = self.client.readiness()
        ready = ready and self.driver.connected
        if self.draining:  # not ready, so the VRRP health check moves the VIP away
            ready, reason = False, DRAINING
        if ready and not self.active:
            reason = f"ready; {NOT_ACTIVE}"
        return ready, reason

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if not self.active:
            raise PipelineUnavailable(NOT_ACTIVE)
        if self.draining:
            raise PipelineUnavailable(DRAINING, self.scheduler.config.retry_after_s)
        ready, reason = self.readiness()
        if not ready and not self.driver.recovering:  # while rebuilding, new ones wait too
            raise PipelineUnavailable(reason, self.scheduler.config.retry_after_s)
        check_request(request, self.head.vocab_size)  # fails alone here, not a whole step
        seq = Sequence(request)
        self.scheduler.add(seq)
        self.driver.wake.set()
        try:
            while True:
                item = await seq.outbox.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not seq.is_finished:  # the reader left early: free it within one step
                self.scheduler.finish(seq, "cancelled")
                self.driver.wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.driver.run(), name="duet-pipeline")

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests; wait up to timeout_s for the admitted ones to finish.
        Returns how many had not (close() fails them)."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        left = len(self.scheduler.running) + len(self.scheduler.waiting)
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            left = len(self.scheduler.running) + len(self.scheduler.waiting)
        return left

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.scheduler.fail_all(PipelineUnavailable("the master is shutting down"))
        await self.driver.close()

    def set_active(self, active: bool) -> None:
        self.active = active

    def stats(self) -> dict:
        """Point-in-time numbers for tests and debugging."""
        s, d = self.scheduler, self.driver
        return dataclasses.asdict(s.config) | dict(
            running=len(s.running), waiting=len(s.waiting), inflight=len(d.inflight),
            head_kv_used_tokens=d.head_kv["used_tokens"],
            head_kv_cached_tokens=d.head_kv["cached_tokens"],
            prefix_cached_blocks=s.kv.prefix.num_blocks if s.kv.prefix is not None else 0,
            worker_kv_used_tokens=d.worker_kv_used_tokens)
