"""The I/O around the scheduler: connect, send steps, receive replies, watchdog, reconnect.

Three tasks share one event loop: the sender (schedule -> head forward in a thread -> send),
the receiver (replies in order -> `Scheduler.postprocess`) and a watchdog (a step unanswered
for `step_timeout_s` means the worker is gone). With `max_inflight_batches` = 2 the head
computes step B while the worker computes A.

When the stream breaks (the worker died, restarted or drained), every running sequence is
rebuilt rather than failed: the head's KV is freed, the client reconnects with backoff, and
the scheduler re-prefills each sequence's prompt and output so far on the new stream, with
`resume_output_ids` so the worker restores the sampler (penalties, seeded generator, grammar).
Both stages' kept prefix blocks are dropped, so a rebuilt sequence starts on none of them. The
readers see a pause; past `recovery_budget_s` every sequence fails (master/recovery.py). A
draining worker says so (`StepReply.drain`): the sender stops, the steps sent are answered,
and the stream is rebuilt as above.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from engine.dtypes import DTYPES
from engine.parallel import RankFailure
from master import head_ops
from master.generation import PipelineUnavailable, SequenceFailed
from master.recovery import RecoveryClock
from master.scheduler import Scheduler
from master.step import Step
from master.wire import empty_hidden, reply_outcomes, step_request
from proto import pipeline_pb2 as pb

log = logging.getLogger("duet.master.generator")
MESSAGE_SLACK_BYTES = 1 << 20  # room for the step's sequence list next to the hidden states


class PipelineDriver:
    """Drives a Scheduler over a Head (in its own thread) and a PipelineClient's Step stream."""

    def __init__(self, head, client, scheduler: Scheduler, *, metrics, step_timeout_s: float,
                 recovery_budget_s: float = 0.0):
        self.head = head  # launch(chunks, token_ids) -> PendingHidden; release(ids); kv_*
        self.client = client  # connect_with_backoff() -> stream; readiness(); mark_down()
        self.scheduler = scheduler
        self.metrics = metrics
        self.step_timeout_s = step_timeout_s
        self.recovery = RecoveryClock(recovery_budget_s)
        self.connected = False  # a handshake passed and the Step stream is open
        self.inflight: deque[tuple[Step, float]] = deque()  # (step, sent at monotonic s)
        self.worker_kv_used_tokens = 0  # as of the last StepReply
        self.worker_kv_capacity_tokens = 0
        self.wake = asyncio.Event()  # set when the scheduler may have something to send
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="duet-head")
        self.head_kv = head_ops.kv_numbers(head)  # updated in the head thread (head_ops.py)
        self._waiter = ThreadPoolExecutor(1, thread_name_prefix="duet-head-copy")

    async def run(self) -> None:
        """Connect, serve until the stream breaks, rebuild (or fail) what ran, reconnect."""
        while True:
            stream = await self._reconnect()
            reply = self.client.handshake
            self.worker_kv_capacity_tokens = reply.kv_capacity_tokens
            worker_kv = reply.stream_kv_tokens or reply.kv_capacity_tokens  # this stream's share
            self.scheduler.set_limits(min(self.head.kv_capacity_tokens, worker_kv),
                                      self._max_step_tokens(), self._same_blocks(reply))
            self.connected = True
            try:
                await self._serve(stream)
            except PipelineUnavailable as e:
                await self._on_down(stream, str(e))
            except Exception as e:  # a bug must not leave a server that hangs: fail, reconnect
                log.exception("pipeline loop failed")
                await self._on_down(stream, f"internal error in the pipeline loop: {e!r}")

    @property
    def recovering(self) -> bool:
        return self.recovery.waiting

    async def _reconnect(self):
        """The next Step stream; within the recovery budget, or fail everything and go on."""
        if self.recovery.until is None:
            return await self.client.connect_with_backoff()
        try:
            return await asyncio.wait_for(self.client.connect_with_backoff(),
                                          self.recovery.left_s())
        except asyncio.TimeoutError:
            reason = self.recovery.expire()
            log.error("%s; failing %d sequences", reason, len(self.scheduler.running))
            held = self.scheduler.fail_all(PipelineUnavailable(
                reason, self.scheduler.config.retry_after_s))
            await self._release_head([s.seq_id for s in held])
            return await self.client.connect_with_backoff()

    async def close(self) -> None:
        await self.client.close()
        self._executor.shutdown(wait=True)
        self._waiter.shutdown(wait=True)

    def _max_step_tokens(self) -> int:
        """New tokens whose hidden states fit one step message (both ends' limits)."""
        per_token = self.head.hidden_size * DTYPES[self.head.dtype].itemsize
        tokens = (self.client.max_message_bytes() - MESSAGE_SLACK_BYTES) // per_token
        if tokens < self.scheduler.config.step_token_budget:
            log.warning("step_token_budget lowered to %d: a step message holds no more", tokens)
        return max(1, tokens)

    def _same_blocks(self, reply: pb.HandshakeReply) -> bool:
        """Prefix caching needs both stages to cut KV blocks alike."""
        mine = self.scheduler.config.kv_block_size
        if reply.kv_block_size != mine and self.scheduler.config.enable_prefix_caching:
            log.warning("prefix caching off: the worker's KV blocks hold %d tokens, ours %d",
                        reply.kv_block_size, mine)
            return False
        return True

    async def _serve(self, stream) -> None:
        outgoing: asyncio.Queue = asyncio.Queue()  # (step, PendingHidden | None), launch order
        tasks = [asyncio.create_task(c) for c in
                 (self._send_loop(outgoing), self._write_loop(stream, outgoing),
                  self._recv_loop(stream), self._watchdog())]
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
        self.recovery.lost(reason)
        if self.recovery.budget_s > 0:
            held = self.scheduler.requeue_all()
            log.warning("rebuilding %d sequences on the next worker (within %.3g s)",
                        len(self.scheduler.running), self.recovery.left_s())
        else:
            held = [s.seq_id for s in self.scheduler.fail_all(PipelineUnavailable(reason))]
        await self._release_head(held)
        self.update_metrics()

    async def _release_head(self, seq_ids: list[str]) -> None:
        """Free these sequences' head KV and the head's kept blocks (the worker's went with
        the stream): after any head forward still running in the executor, like every head
        operation."""
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._in_head_thread, head_ops.reset, seq_ids)

    async def _send_loop(self, outgoing: asyncio.Queue) -> None:
        """Schedule and launch micro-batches; the write loop sends each once its hidden states
        reach the host, so the head computes micro-batch n+1 while n is copied and sent."""
        loop = asyncio.get_running_loop()
        limit = self.scheduler.config.max_inflight_batches
        while True:
            self.wake.clear()
            room = len(self.inflight) < limit and self.recovery.drain is None
            step = self.scheduler.schedule() if room else None
            if step is None:
                self.scheduler.deliver()  # nothing to send first: the readers go now
                await self.wake.wait()
                continue
            try:
                pending = await loop.run_in_executor(self._executor, self._in_head_thread,
                                                     head_ops.launch_step, step)
            except Exception as e:  # a bad step fails its sequences, not the server
                self._abandon(step, e)
                pending = None
            self.inflight.append((step, time.monotonic()))
            outgoing.put_nowait((step, pending))
            if self.metrics is not None and step.prefix_query_tokens:
                self.metrics.observe_prefix_cache(step.prefix_query_tokens, step.prefix_hit_tokens)
            self.update_metrics()

    async def _write_loop(self, stream, outgoing: asyncio.Queue) -> None:
        """Send launched micro-batches in order, each as soon as its copy to the host is done."""
        loop = asyncio.get_running_loop()
        while True:
            step, pending = await outgoing.get()
            hidden = None
            if pending is not None:
                try:  # in the waiter thread: the head thread goes on launching meanwhile
                    hidden = (pending.message() if pending.done() else
                              await loop.run_in_executor(self._waiter, pending.message))
                except Exception as e:
                    self._abandon(step, e)
            if hidden is None:
                hidden = empty_hidden(self.head.hidden_size, self.head.dtype)
            await stream.send(step_request(step, hidden))  # cannot fail: see check_request
            self.scheduler.deliver()  # the tokens of the last reply, while the worker computes

    def _abandon(self, step: Step, e: Exception) -> None:
        log.error("head forward of step %d failed", step.step_id, exc_info=e)
        code = "UNAVAILABLE" if isinstance(e, RankFailure) else "INTERNAL"  # 503 / 500
        self.scheduler.abandon(step, SequenceFailed(code, f"head forward: {e}"))

    def _in_head_thread(self, op, *args):
        """op(head, *args) (master/head_ops.py), then the KV numbers for the loop, there."""
        try:
            return op(self.head, *args)
        finally:
            self.head_kv = head_ops.kv_numbers(self.head)

    async def _recv_loop(self, stream) -> None:
        while True:
            reply = await stream.recv()
            if reply.HasField("drain"):  # answers no step: the sender stops
                log.warning("the worker asks to pause: %s; %d steps to receive first",
                            reply.drain.reason, len(self.inflight))
                self.recovery.drain = reply.drain
                self._closing_if_drained()
                continue
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
            self.wake.set()  # the next step goes out before its tokens reach the readers
            self.scheduler.postprocess(step, reply_outcomes(reply))
            self.recovery.until = None  # the worker answers again: rebuilt
            self.update_metrics()
            self._closing_if_drained()

    def _closing_if_drained(self) -> None:  # all steps sent to a draining worker answered
        if self.recovery.drain is not None and not self.inflight:
            raise PipelineUnavailable(f"the worker drained: {self.recovery.drain.reason}")

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
        self.metrics.set_cache_usage(max(self.head_kv["usage"], worker))
