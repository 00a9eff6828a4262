"""The `Generator` the HTTP layer calls: the scheduler driven over the head and the worker.

Three tasks share one event loop: the sender (schedule -> head forward in a thread -> send),
the receiver (replies in order -> tokens to each sequence's outbox) and a watchdog (a step
unanswered for `step_timeout_s` means the worker is gone). With `max_inflight_batches` = 2
the head computes micro-batch B while the worker computes A. When the stream breaks, every
sequence fails with PipelineUnavailable, the head's KV is freed, and the client reconnects.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from master.generation import (GenerationRequest, PipelineUnavailable, SequenceFailed,
                               TokenEvent, check_request)
from master.scheduler import MicroBatch, Scheduler, SchedulerConfig
from master.sequence import Sequence
from master.wire import STATUS_NAMES, step_request
from proto import pipeline_pb2 as pb
from proto.convert import TORCH_DTYPES

log = logging.getLogger("duet.master.generator")
MESSAGE_SLACK_BYTES = 1 << 20  # room for the step's sequence list next to the hidden states
NOT_ACTIVE = ("standby API not active: the API answers 503 until the VRRP agent activates it "
              "(POST /admin/vrrp with state MASTER, or POST /admin/activate)")


class PipelineGenerator:
    """Implements master.generation.Generator over a Head and a PipelineClient."""

    def __init__(self, head, client, config: SchedulerConfig, *, metrics=None,
                 step_timeout_s: float = 120.0, active: bool = True):
        if step_timeout_s <= 0:
            raise ValueError(f"step_timeout_s must be > 0, got {step_timeout_s!r}")
        self.head = head  # forward(chunks, token_ids) -> pb.Tensor; release(ids); kv_*
        self.client = client  # connect_with_backoff() -> stream; readiness(); mark_down()
        self.scheduler = Scheduler(config)
        self.metrics = metrics
        self.step_timeout_s = step_timeout_s
        self.active = active  # a standby API answers only once activated
        self.worker_kv_used_tokens = 0  # as of the last StepReply
        self.worker_kv_capacity_tokens = 0
        self._inflight: deque[tuple[MicroBatch, float]] = deque()  # (batch, sent at)
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="duet-head")
        self._connected = False
        self._task: asyncio.Task | None = None

    # --- the Generator protocol --------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        """Whether this API could serve: head loaded, worker connected, handshake passed.

        An inactive standby is ready in this sense (the VRRP health check on its host asks
        exactly that); its reason says that the API answers 503 until it is activated.
        """
        ready, reason = self.client.readiness()
        ready = ready and self._connected
        if ready and not self.active:
            reason = f"ready; {NOT_ACTIVE}"
        return ready, reason

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if not self.active:
            raise PipelineUnavailable(NOT_ACTIVE)
        ready, reason = self.readiness()
        if not ready:
            raise PipelineUnavailable(reason)
        check_request(request, self.head.vocab_size)  # fails alone here, not a whole step
        seq = Sequence(request)
        self.scheduler.add(seq)
        self._wake.set()
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
                self._wake.set()

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="duet-pipeline")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.scheduler.fail_all(PipelineUnavailable("the master is shutting down"))
        await self.client.close()
        self._executor.shutdown(wait=True)

    def set_active(self, active: bool) -> None:
        self.active = active

    async def _run(self) -> None:
        while True:
            stream = await self.client.connect_with_backoff()
            reply = self.client.handshake
            self.worker_kv_capacity_tokens = reply.kv_capacity_tokens
            worker_kv = reply.stream_kv_tokens or reply.kv_capacity_tokens  # this stream's share
            self.scheduler.set_limits(min(self.head.kv_capacity_tokens, worker_kv),
                                      self._max_step_tokens())
            self._connected = True
            try:
                await self._serve(stream)
            except PipelineUnavailable as e:
                await self._on_down(stream, str(e))
            except Exception as e:  # a bug must not leave a server that hangs: fail, reconnect
                log.exception("pipeline loop failed")
                await self._on_down(stream, f"internal error in the pipeline loop: {e!r}")

    def _max_step_tokens(self) -> int:
        """New tokens whose hidden states fit one step message (both ends' limits)."""
        per_token = self.head.hidden_size * TORCH_DTYPES[self.head.dtype].itemsize
        tokens = (self.client.max_message_bytes() - MESSAGE_SLACK_BYTES) // per_token
        if tokens < self.scheduler.config.step_token_budget:
            log.warning("step_token_budget lowered to %d: a step message holds no more", tokens)
        return max(1, tokens)

    async def _serve(self, stream) -> None:
        tasks = [asyncio.create_task(c) for c in
                 (self._send_loop(stream), self._recv_loop(stream), self._watchdog())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_down(self, stream, reason: str) -> None:
        log.warning("pipeline down: %s", reason)
        self._connected = False
        self.client.mark_down(reason)
        stream.cancel()
        self._inflight.clear()
        held = self.scheduler.fail_all(PipelineUnavailable(reason))
        # After any head forward still running in the executor, like every head operation.
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self.head.release, [s.seq_id for s in held])
        self._update_metrics()

    # --- the three tasks ---------------------------------------------------------------
    async def _send_loop(self, stream) -> None:
        loop = asyncio.get_running_loop()
        limit = self.scheduler.config.max_inflight_batches
        while True:
            self._wake.clear()
            batch = self.scheduler.schedule() if len(self._inflight) < limit else None
            if batch is None:
                await self._wake.wait()
                continue
            try:
                hidden = await loop.run_in_executor(self._executor, self._head_step, batch)
            except Exception as e:  # a bad batch fails its sequences, not the server
                log.exception("head forward of step %d failed", batch.step_id)
                self.scheduler.abandon(batch, SequenceFailed("INTERNAL", f"head forward: {e}"))
                continue
            self._inflight.append((batch, time.monotonic()))
            await stream.send(step_request(batch, hidden))  # cannot fail: see check_request
            self._update_metrics()

    def _head_step(self, batch: MicroBatch) -> pb.Tensor:
        """In the head thread: free what finished, then run embedding + layers [0, k)."""
        self.head.release([s.seq_id for s in batch.release])
        return self.head.forward(batch.chunks, batch.token_ids)

    async def _recv_loop(self, stream) -> None:
        while True:
            reply = await stream.recv()
            if not self._inflight:
                raise PipelineUnavailable(f"worker answered step {reply.step_id}, none pending")
            batch, sent_at = self._inflight.popleft()
            if reply.step_id != batch.step_id:
                raise PipelineUnavailable(
                    f"worker answered step {reply.step_id}, expected {batch.step_id}")
            if self.metrics is not None:
                self.metrics.observe_hop(time.monotonic() - sent_at)
            self.worker_kv_used_tokens = reply.kv_used_tokens
            self.worker_kv_capacity_tokens = reply.kv_capacity_tokens
            self.scheduler.complete(batch)
            self._wake.set()  # before the outboxes: the next step goes ahead of SSE writing
            self._deliver(batch, reply)
            self._update_metrics()

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.step_timeout_s / 4))
            if self._inflight and time.monotonic() - self._inflight[0][1] > self.step_timeout_s:
                step = self._inflight[0][0].step_id
                raise PipelineUnavailable(
                    f"worker did not answer step {step} within {self.step_timeout_s:g} s")

    # --- results -----------------------------------------------------------------------
    def _deliver(self, batch: MicroBatch, reply: pb.StepReply) -> None:
        results = {r.seq_id: r for r in reply.results}
        for seq, sample in zip(batch.seqs, batch.samples):
            if seq.is_finished:
                continue  # cancelled while in flight; released with the next step
            result = results.get(seq.seq_id)
            outcome = result.WhichOneof("outcome") if result is not None else None
            if outcome == "error":
                seq.params_sent = False  # the worker already dropped it
                code = STATUS_NAMES.get(result.error.code, str(result.error.code))
                self.scheduler.finish(seq, "failed", SequenceFailed(code, result.error.message))
            elif outcome == "sampled":
                self._append(seq, result.sampled)
            elif sample:
                self.scheduler.finish(seq, "failed", SequenceFailed(
                    "INTERNAL", f"worker returned no token for {seq.seq_id}"))

    def _append(self, seq: Sequence, sampled: pb.Sampled) -> None:
        reason = None
        if sampled.stopped:
            reason = "stop"
        elif seq.num_output_tokens + 1 >= seq.max_tokens:
            reason = "length"
        logprob = sampled.logprob if seq.params.logprobs is not None else None
        top = tuple((t.token_id, t.logprob) for t in sampled.top_logprobs)
        seq.append_token(TokenEvent(sampled.token_id, logprob, top, reason))
        if reason is not None:
            self.scheduler.finish(seq, reason)

    def _update_metrics(self) -> None:
        if self.metrics is None:
            return
        s = self.scheduler
        self.metrics.set_queue(len(s.running), len(s.waiting))
        worker = self.worker_kv_used_tokens / max(1, self.worker_kv_capacity_tokens)
        self.metrics.set_cache_usage(max(self.head.kv_usage, worker))

    def stats(self) -> dict:
        """Point-in-time numbers for tests and debugging."""
        s = self.scheduler
        return dataclasses.asdict(s.config) | dict(
            running=len(s.running), waiting=len(s.waiting), inflight=len(self._inflight),
            head_kv_used_tokens=self.head.kv_used_tokens,
            worker_kv_used_tokens=self.worker_kv_used_tokens)
