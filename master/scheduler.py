"""Continuous batching: the sequence lifecycle from admission to release, without I/O.

The pipeline driver calls `schedule()` whenever fewer than `max_inflight_batches` steps are
on their way, runs the head on the result and sends it; with the worker's reply it calls
`postprocess(step, outcomes)`, which appends tokens and decides what finished. Each step
takes decodes first, then prefill chunks, then newly admitted sequences, under a token
budget; a long prompt is split over steps and only its last chunk samples. A sequence is in
at most one in-flight step, so with two in flight the running set splits itself into halves
that alternate between the head and the worker.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from engine.batch import SeqChunk
from engine.sampler import SampleResult
from master.generation import QueueFull, SequenceFailed, TokenEvent
from master.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits, validated once."""

    max_num_seqs: int = 64  # running sequences (KV reserved on both stages)
    max_waiting: int = 256  # queued beyond the free running slots: QueueFull (HTTP 429)
    step_token_budget: int = 512  # new tokens per micro-batch, prefill chunks included
    max_inflight_batches: int = 2  # micro-batches sent and not yet answered
    kv_block_size: int = 16  # tokens per KV block: reservations round up to it
    retry_after_s: float = 1.0  # the Retry-After of a full queue or a lost worker

    def __post_init__(self):
        for name in ("max_num_seqs", "step_token_budget", "max_inflight_batches", "kv_block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting!r}")
        if self.retry_after_s <= 0:
            raise ValueError(f"retry_after_s must be > 0, got {self.retry_after_s!r}")


@dataclass(frozen=True)
class ScheduledSeq:
    """One sequence in a step: its chunk, whether it samples, whether its params ride along."""

    seq: Sequence
    chunk: SeqChunk  # positions [start_pos, end_pos) fed through the head this step
    samples: bool  # the chunk ends at the last known token: the worker samples the next
    sends_params: bool  # first appearance: the worker gets the sampling params with it


@dataclass
class Step:
    """One micro-batch: scheduled sequences in row order, the head's input ids, releases."""

    step_id: int
    seqs: list[ScheduledSeq] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # [T] the head's input
    release: list[Sequence] = field(default_factory=list)  # free on both stages first
    worker_release: list[str] = field(default_factory=list)  # ids the worker holds of those

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def chunks(self) -> list[SeqChunk]:
        return [s.chunk for s in self.seqs]


# What the worker said about one sequence of a step: a token, or why it failed.
Outcome = SampleResult | SequenceFailed


class Scheduler:
    """Waiting queue, running set and per-step selection under budget and KV capacity."""

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._to_release: list[Sequence] = []
        self._next_step_id = 1
        self.kv_capacity_tokens = 0  # min over both stages; 0 until the handshake
        self.kv_reserved_tokens = 0  # worst case of every running sequence
        self.step_token_budget = config.step_token_budget  # lowered to what a message holds

    def set_limits(self, kv_capacity_tokens: int, max_step_tokens: int | None = None) -> None:
        """What the connected pipeline allows: KV slots on both stages, tokens per message."""
        assert max_step_tokens is None or max_step_tokens >= 1, max_step_tokens
        self.kv_capacity_tokens = kv_capacity_tokens
        self.step_token_budget = min(self.config.step_token_budget,
                                     max_step_tokens or self.config.step_token_budget)

    def _kv_need(self, seq: Sequence) -> int:
        block = self.config.kv_block_size
        return math.ceil(seq.max_len / block) * block

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; QueueFull when more than max_waiting would wait for a free slot."""
        free_slots = max(0, self.config.max_num_seqs - len(self.running))
        if len(self.waiting) - free_slots >= self.config.max_waiting:
            raise QueueFull(self.config.retry_after_s)
        if self.kv_capacity_tokens and self._kv_need(seq) > self.kv_capacity_tokens:
            raise SequenceFailed(
                "RESOURCE_EXHAUSTED",
                f"prompt + max_tokens needs {self._kv_need(seq)} KV slots; "
                f"the pipeline holds {self.kv_capacity_tokens}",
            )
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str, error: BaseException | None = None) -> None:
        """End a sequence for any reason; its KV is released with the next micro-batch."""
        if seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        elif seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.kv_reserved_tokens -= self._kv_need(seq)
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
        while self.waiting and budget > 0 and len(step.seqs) < limit and self._admit_next():
            budget -= self._add_chunk(step, self.running[-1], budget)
        if not step.seqs and not step.release:
            return None
        self._next_step_id += 1
        return step

    def _seqs_per_batch(self) -> int:
        """Split the active sequences evenly over the micro-batches in flight."""
        active = min(self.config.max_num_seqs, len(self.running) + len(self.waiting))
        return max(1, math.ceil(active / self.config.max_inflight_batches))

    def _admit_next(self) -> bool:
        """Move the oldest waiting sequence to running if a slot and its worst-case KV fit."""
        seq = self.waiting[0]
        need = self._kv_need(seq)
        if len(self.running) >= self.config.max_num_seqs:
            return False
        if self.kv_reserved_tokens + need > self.kv_capacity_tokens:
            return False
        self.waiting.popleft()
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        self.kv_reserved_tokens += need
        return True

    def _add_chunk(self, step: Step, seq: Sequence, budget: int) -> int:
        """Put the next chunk of `seq` (at most `budget` tokens) into the step."""
        start = seq.num_computed_tokens
        num = min(seq.pending_tokens(), budget)
        assert num > 0, f"{seq} has nothing to compute"
        step.seqs.append(ScheduledSeq(seq, SeqChunk(seq.seq_id, start, num),
                                      samples=start + num == len(seq.token_ids),
                                      sends_params=not seq.params_sent))
        step.token_ids.extend(seq.token_ids[start : start + num])
        seq.params_sent = True
        seq.num_computed_tokens += num
        seq.in_flight = True
        return num

    def postprocess(self, step: Step, outcomes: dict[str, Outcome]) -> None:
        """The worker answered `step`: append sampled tokens, finish what ended or failed.

        `outcomes` maps seq_id to the worker's result; a sequence that sampled nothing has none.
        """
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
                self._append(seq, outcome)
            elif item.samples:
                self.finish(seq, "failed", SequenceFailed(
                    "INTERNAL", f"worker returned no token for {seq.seq_id}"))

    def _append(self, seq: Sequence, sampled: SampleResult) -> None:
        reason = None
        if sampled.stopped:
            reason = "stop"
        elif seq.num_output_tokens + 1 >= seq.max_tokens:
            reason = "length"
        logprob = sampled.logprob if seq.params.logprobs is not None else None
        seq.append_token(TokenEvent(sampled.token_id, logprob, sampled.top_logprobs, reason))
        if reason is not None:
            self.finish(seq, reason)

    def abandon(self, step: Step, error: BaseException) -> None:
        """`step` never reached the worker (its head forward failed): fail its sequences."""
        for item in step.seqs:
            item.seq.in_flight = False
            if item.sends_params:
                item.seq.params_sent = False  # the worker never saw it: nothing to release
            self.finish(item.seq, "failed", error)
        self._to_release.extend(step.release)

    def requeue_all(self) -> list[str]:
        """The worker lost every sequence: each running one is rebuilt from position 0 (its
        prompt and output so far re-prefilled, params resent); returns the ids whose head KV
        must be freed first. Waiting sequences and KV reservations stay as they are."""
        held = [s.seq_id for s in self.running + self._to_release]
        for seq in self.running:
            seq.in_flight = seq.params_sent = False
            seq.num_computed_tokens = 0
        self._to_release = []  # the worker holds none of them any more
        return held

    def fail_all(self, error: BaseException) -> list[Sequence]:
        """The pipeline broke: every sequence fails; returns those that hold head KV."""
        held = [s for s in self.running if s.num_computed_tokens > 0] + self._to_release
        for seq in list(self.running) + list(self.waiting):
            seq.in_flight = False
            seq.finish("failed", error)
        self.running.clear()
        self.waiting.clear()
        self._to_release = []
        self.kv_reserved_tokens = 0
        return held
