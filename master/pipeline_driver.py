"""The I/O around the scheduler: connect, send steps, receive replies, watchdog, reconnect.

Three tasks share one event loop: the sender (schedule -> head forward in a thread -> send),
the receiver (replies in order -> `Scheduler.postprocess`) and a watchdog (a step unanswered
for `step_timeout_s` means the worker is gone). With `max_inflight_batches` = 2 the head
computes step B while the worker computes A. When the stream breaks, every sequence fails
with PipelineUnavailable, the head's KV is freed, and the client reconnects.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from engine.dtypes import DTYPES
from master.generation import PipelineUnavailable, SequenceFailed
from master.scheduler import Scheduler, Step
from master.wire import reply_outcomes, step_request
from proto import pipeline_pb2 as pb

log = logging.getLogger("duet.master.generator")
MESSAGE_SLACK_BYTES = 1 << 20  # room for the step's sequence list next to the hidden states


class PipelineDriver:
    """Drives a Scheduler over a Head (in its own thread) and a PipelineClient's Step stream."""

    def __init__(self, head, client, scheduler: Scheduler, *, metrics, step_timeout_s: float):
        self.head = head  # forward(chunks, token_ids) -> pb.Tensor; release(ids); kv_*
        self.client = client  # connect_with_backoff() -> stream; readiness(); mark_down()
        self.scheduler = scheduler
        self.metrics = metrics
        self.step_timeout_s = step_timeout_s
        self.connected = False  # a handshake passed and the Step stream is open
        self.inflight: deque[tuple[Step, float]] = deque()  # (step, sent at monotonic s)
        self.worker_kv_used_tokens = 0  # as of the last StepReply
        self.worker_kv_capacity_tokens = 0
        self.wake = asyncio.Event()  # set when the scheduler may have something to send
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="duet-head")

    async def run(self) -> None:
        """Connect, serve until the stream breaks, fail what was in flight, reconnect."""
        while True:
            stream = await self.client.connect_with_backoff()
            reply = self.client.handshake
            self.worker_kv_capacity_tokens = reply.kv_capacity_tokens
            worker_kv = reply.stream_kv_tokens or reply.kv_capacity_tokens  # this stream's share
            self.scheduler.set_limits(min(self.head.kv_capacity_tokens, worker_kv),
                                      self._max_step_tokens())
            self.connected = True
            try:
                await self._serve(stream)
            except PipelineUnavailable as e:
                await self._on_down(stream, str(e))
            except Exception as e:  # a bug must not leave a server that hangs: fail, reconnect
                log.exception("pipeline loop failed")
                await self._on_down(stream, f"internal error in the pipeline loop: {e!r}")

    async def close(self) -> None:
        await self.client.close()
        self._executor.shutdown(wait=True)

    def _max_step_tokens(self) -> int:
        """New tokens whose hidden states fit one step message (both ends' limits)."""
        per_token = self.head.hidden_size * DTYPES[self.head.dtype].itemsize
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
        self.connected = False
        self.client.mark_down(reason)
        stream.cancel()
        self.inflight.clear()
        held = self.scheduler.fail_all(PipelineUnavailable(reason))
        # After any head forward still running in the executor, like every head operation.
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self.head.release, [s.seq_id for s in held])
        self.update_metrics()

    async def _send_loop(self, stream) -> None:
        loop = asyncio.get_running_loop()
        limit = self.scheduler.config.max_inflight_batches
        while True:
            self.wake.clear()
            step = self.scheduler.schedule() if len(self.inflight) < limit else None
            if step is None:
                await self.wake.wait()
                continue
            try:
                hidden = await loop.run_in_executor(self._executor, self._head_step, step)
            except Exception as e:  # a bad step fails its sequences, not the server
                log.exception("head forward of step %d failed", step.step_id)
                self.scheduler.abandon(step, SequenceFailed("INTERNAL", f"head forward: {e}"))
                continue
            self.inflight.append((step, time.monotonic()))
            await stream.send(step_request(step, hidden))  # cannot fail: see check_request
            self.update_metrics()

    def _head_step(self, step: Step) -> pb.Tensor:
        """In the head thread: free what finished, then run embedding + layers [0, k)."""
        self.head.release([s.seq_id for s in step.release])
        return self.head.forward(step.chunks, step.token_ids)

    async def _recv_loop(self, stream) -> None:
        while True:
            reply = await stream.recv()
            if not self.inflight:
                raise PipelineUnavailable(f"worker answered step {reply.step_id}, none pending")
            step, sent_at = self.inflight.popleft()
            if reply.step_id != step.step_id:
                raise PipelineUnavailable(
                    f"worker answered step {reply.step_id}, expected {step.step_id}")
            if self.metrics is not None:
                self.metrics.observe_hop(time.monotonic() - sent_at)
            self.worker_kv_used_tokens = reply.kv_used_tokens
            self.worker_kv_capacity_tokens = reply.kv_capacity_tokens
            self.wake.set()  # before the outboxes: the next step goes ahead of SSE writing
            self.scheduler.postprocess(step, reply_outcomes(reply))
            self.update_metrics()

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.step_timeout_s / 4))
            if self.inflight and time.monotonic() - self.inflight[0][1] > self.step_timeout_s:
                step = self.inflight[0][0].step_id
                raise PipelineUnavailable(
                    f"worker did not answer step {step} within {self.step_timeout_s:g} s")

    def update_metrics(self) -> None:
        if self.metrics is None:
            return
        s = self.scheduler
        self.metrics.set_queue(len(s.running), len(s.waiting))
        worker = self.worker_kv_used_tokens / max(1, self.worker_kv_capacity_tokens)
        self.metrics.set_cache_usage(max(self.head.kv_usage, worker))
