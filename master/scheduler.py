"""Continuous batching: the sequence lifecycle from admission to release, without I/O.

The pipeline driver calls `schedule()` whenever fewer than `max_inflight_batches` steps are
on their way, runs the head on the result and sends it; with the worker's reply it calls
`postprocess(step, outcomes)`, which appends tokens and decides what finished. Each step
takes decodes first, then prefill chunks, then newly admitted sequences, under a token
budget; a long prompt is split over steps and only its last chunk samples. A sequence is in
at most one in-flight step, so with two in flight the running set splits itself into halves
that alternate between the head and the worker. With prefix caching (master/prefix_cache.py)
a new prompt starts after its longest kept prefix, and kept blocks count once against the KV
capacity of both stages.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from engine.batch import SeqChunk
from engine.sampler import SampleResult
from master.generation import QueueFull, SequenceFailed, TokenEvent
from master.kv_budget import KVBudget
from master.sequence import Sequence, SequenceStatus
from master.step import Adopted, Outcome, ScheduledSeq, Step


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits, validated once."""

    max_num_seqs: int = 64  # running sequences (KV reserved on both stages)
    max_waiting: int = 256  # queued beyond the free running slots: QueueFull (HTTP 429)
    step_token_budget: int = 2048  # new tokens per micro-batch, prefill chunks included
    max_inflight_batches: int = 2  # micro-batches sent and not yet answered
    kv_block_size: int = 16  # tokens per KV block: reservations round up to it
    retry_after_s: float = 1.0  # the Retry-After of a full queue or a lost worker
    enable_prefix_caching: bool = True  # share full KV blocks of equal prefixes on both stages

    def __post_init__(self):
        for name in ("max_num_seqs", "step_token_budget", "max_inflight_batches", "kv_block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting!r}")
        if self.retry_after_s <= 0:
            raise ValueError(f"retry_after_s must be > 0, got {self.retry_after_s!r}")


class Scheduler:
    """Waiting queue, running set and per-step selection under budget and KV capacity."""

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._to_release: list[Sequence] = []
        self._held: list[Sequence] = []  # sequences with tokens not yet delivered
        self._next_step_id = 1
        self.kv = KVBudget(config.kv_block_size, config.enable_prefix_caching)
        self.step_token_budget = config.step_token_budget  # lowered to what a message holds

    def set_limits(self, kv_capacity_tokens: int, max_step_tokens: int | None = None,
                   prefix_caching: bool = True) -> None:
        """What the connected pipeline allows: KV slots on both stages, tokens per message,
        prefix caching (both stages must cut blocks alike)."""
        assert max_step_tokens is None or max_step_tokens >= 1, max_step_tokens
        self.kv.set_capacity(kv_capacity_tokens, prefix_caching)
        self.step_token_budget = min(self.config.step_token_budget,
                                     max_step_tokens or self.config.step_token_budget)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; QueueFull when more than max_waiting would wait for a free slot."""
        free_slots = max(0, self.config.max_num_seqs - len(self.running))
        if len(self.waiting) - free_slots >= self.config.max_waiting:
            raise QueueFull(self.config.retry_after_s)
        if self.kv.capacity_tokens and self.kv.need(seq) > self.kv.capacity_tokens:
            raise SequenceFailed(
                "RESOURCE_EXHAUSTED",
                f"prompt + max_tokens needs {self.kv.need(seq)} KV slots; "
                f"the pipeline holds {self.kv.capacity_tokens}",
            )
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str, error: BaseException | None = None) -> None:
        """End a sequence for any reason; its KV is released with the next micro-batch."""
        if seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        elif seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.kv.release(seq)
            self._to_release.append(seq)
        seq.finish(reason, error)

    def has_releases(self) -> bool:
        return bool(self._to_release)

    def schedule(self) -> Step | None:
        """The next step, or None when nothing is ready and nothing needs releasing."""
        release, self._to_release = self._to_release, []
        step = Step(step_id=self._next_step_id, release=release,
                    worker_release=[s.seq_id for s in release if s.params_sent])
        budget = self.step_token_budget
        limit = self._seqs_per_batch()
        ready = [s for s in self.running if not s.in_flight and s.pending_tokens()]
        decodes = [s for s in ready if not s.is_prefilling]
        prefills = [s for s in ready if s.is_prefilling]
        for seq in decodes + prefills:
            if budget == 0 or len(step.seqs) >= limit:
                break
            budget -= self._add_chunk(step, seq, budget)
        while self.waiting and budget > 0 and len(step.seqs) < limit and self._admit_next(step):
            budget -= self._add_chunk(step, self.running[-1], budget)
        prefix = self.kv.prefix
        if not (step.seqs or step.adopts or step.release or (prefix and prefix.to_evict)):
            return None
        step.head_only_first()
        if prefix is not None:
            step.cache_blocks, step.evict = prefix.drain()
        self._next_step_id += 1
        return step

    def _seqs_per_batch(self) -> int:
        """Split the active sequences evenly over the micro-batches in flight."""
        active = min(self.config.max_num_seqs, len(self.running) + len(self.waiting))
        return max(1, math.ceil(active / self.config.max_inflight_batches))

    def _admit_next(self, step: Step) -> bool:
        """Move the oldest waiting sequence to running if a slot and its worst-case KV fit
        (it starts after the longest kept prefix of its prompt)."""
        seq = self.waiting[0]
        if len(self.running) >= self.config.max_num_seqs or not self.kv.reserve(seq):
            return False
        self.waiting.popleft()
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        if self.kv.prefix is not None:
            step.prefix_query_tokens += seq.num_prompt_tokens
            step.prefix_hit_tokens += seq.num_computed_tokens
        return True

    def _add_chunk(self, step: Step, seq: Sequence, budget: int) -> int:
        """Put the next chunk of `seq` (at most `budget` tokens) into the step; or, for a
        sequence to adopt, the question to the worker (no tokens)."""
        if seq.adopting:
            step.adopts.append(seq)
            seq.params_sent = seq.in_flight = True
            return 0
        start = seq.num_computed_tokens
        num = min(seq.pending_tokens(), budget)
        head_only = start < seq.worker_pos  # the worker holds these positions already
        if head_only:
            num = min(num, seq.worker_pos - start)
        assert num > 0, f"{seq} has nothing to compute"
        step.seqs.append(ScheduledSeq(seq, SeqChunk(seq.seq_id, start, num),
                                      samples=not head_only and start + num == len(seq.token_ids),
                                      sends_params=not seq.params_sent, head_only=head_only))
        step.token_ids.extend(seq.token_ids[start : start + num])
        seq.params_sent = True
        seq.num_computed_tokens += num
        seq.in_flight = True
        return num

    def postprocess(self, step: Step, outcomes: dict[str, Outcome]) -> None:
        """The worker answered `step`: append sampled tokens, finish what ended or failed.

        `outcomes` maps seq_id to the worker's result; a sequence that sampled nothing has none.
        """
        for seq in step.adopts:
            seq.in_flight = False
            if not seq.is_finished:
                self._adopted(seq, outcomes.get(seq.seq_id))
        for item in step.seqs:
            seq = item.seq
            seq.in_flight = False
            if seq.is_finished:
                continue  # cancelled while in flight; released with the next step
            outcome = outcomes.get(seq.seq_id)
            if isinstance(outcome, SequenceFailed):
                seq.params_sent = False  # the worker already dropped it
                self.finish(seq, "failed", outcome)
            elif outcome is not None:
                self.kv.keep_written(seq, item.chunk.end_pos)
                self._append(seq, outcome)
            elif not item.samples:
                self.kv.keep_written(seq, item.chunk.end_pos)
            else:
                self.finish(seq, "failed", SequenceFailed(
                    "INTERNAL", f"worker returned no token for {seq.seq_id}"))

    def _adopted(self, seq: Sequence, outcome: Outcome | None) -> None:
        """The worker's answer to an adoption: carry on from its tokens and KV positions (the
        head rebuilds [0, next_pos) first); refused or not kept there, start afresh."""
        seq.adopting = False
        if not isinstance(outcome, Adopted):
            seq.params_sent = False  # the worker holds nothing of it
            return
        seq.adopted, seq.worker_pos = True, outcome.next_pos
        for token in outcome.output_ids[seq.num_output_tokens:]:
            stopped = token in seq.params.stop_token_ids
            self._append(seq, SampleResult(token, 0.0, (), stopped))
            if seq.is_finished:
                return

    def _append(self, seq: Sequence, sampled: SampleResult) -> None:
        reason = None
        if sampled.stopped:
            reason = "stop"
        elif seq.num_output_tokens + 1 >= seq.max_tokens:
            reason = "length"
        logprob = sampled.logprob if seq.params.logprobs is not None else None
        seq.append_token(TokenEvent(sampled.token_id, logprob, sampled.top_logprobs, reason))
        if len(seq.held) == 1:
            self._held.append(seq)
        if reason is not None:
            self.finish(seq, reason)

    def deliver(self) -> None:
        """Hand every sampled token to its reader (the driver calls this once the next step
        is sent, or when there is none to send)."""
        held, self._held = self._held, []
        for seq in held:
            seq.deliver()

    def abandon(self, step: Step, error: BaseException) -> None:
        """The head forward of `step` failed: fail its sequences and empty it; what is left
        (releases, kept and evicted blocks, applied on the head already) still goes out."""
        for item in step.seqs:
            item.seq.in_flight = False
            if item.sends_params:
                item.seq.params_sent = False  # the worker never saw it: nothing to release
            self.finish(item.seq, "failed", error)
        step.seqs, step.token_ids = [], []

    def requeue_all(self) -> list[str]:
        """The worker lost every sequence: each running one is rebuilt from position 0 (its
        prompt and output so far re-prefilled, params resent); returns the ids whose head KV
        must be freed first (the head drops its kept blocks too). The kept blocks went with
        the worker, so the rebuilt sequences start on none, hold none, and reserve their whole
        worst case again; their re-prefill keeps its blocks anew. Waiting sequences stay."""
        self.deliver()
        held = [s.seq_id for s in self.running + self._to_release]
        for seq in self.running:
            seq.in_flight = seq.params_sent = False
            seq.num_computed_tokens = seq.worker_pos = 0
            # the worker may still hold it (only our stream broke): ask for it first
            seq.adopting, seq.adopted = bool(seq.resume_key), False
        self.kv.rebuild(self.running)
        self._to_release = []  # the worker holds none of them any more
        return held

    def fail_all(self, error: BaseException) -> list[Sequence]:
        """The pipeline broke: every sequence fails; returns those that hold head KV."""
        self.deliver()
        held = [s for s in self.running if s.num_computed_tokens > 0] + self._to_release
        for seq in list(self.running) + list(self.waiting):
            seq.in_flight = False
            seq.finish("failed", error)
        self.running.clear()
        self.waiting.clear()
        self._to_release = []
        self.kv.clear()  # the worker's kept blocks went with the stream
        return held
