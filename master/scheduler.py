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
from dataclasses import dataclass, field

from engine.batch import SeqChunk
from engine.sampler import SampleResult
from master.generation import QueueFull, SequenceFailed, TokenEvent
from master.prefix_cache import PrefixCache
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
    enable_prefix_caching: bool = True  # share full KV blocks of equal prefixes on both stages

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
    head_only: bool = False  # rebuilds the head's KV of an adopted sequence: not sent


@dataclass
class Step:
    """One micro-batch: scheduled sequences in row order, the head's input ids, releases."""

    step_id: int
    seqs: list[ScheduledSeq] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # [T] the head's input
    release: list[Sequence] = field(default_factory=list)  # free on both stages first
    worker_release: list[str] = field(default_factory=list)  # ids the worker holds of those
    # Prefix caching, applied on both stages before the step runs: keep (seq_id, block
    # index, hash), then the releases, then evict these hashes.
    cache_blocks: list[tuple[str, int, int]] = field(default_factory=list)
    evict: list[int] = field(default_factory=list)
    prefix_query_tokens: int = 0  # prompt tokens of the sequences admitted in this step
    prefix_hit_tokens: int = 0  # of those, tokens found in kept blocks
    adopts: list[Sequence] = field(default_factory=list)  # asked of the worker (no rows)

    @property
    def head_rows(self) -> int:
        """Rows of the head's output that stay here: the head-only chunks, which come first."""
        return sum(s.chunk.num_tokens for s in self.seqs if s.head_only)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def chunks(self) -> list[SeqChunk]:
        return [s.chunk for s in self.seqs]


@dataclass(frozen=True)
class Adopted:
    """The worker handed over a kept sequence: its sampled tokens, its KV positions."""

    output_ids: list[int]
    next_pos: int


# What the worker said about one sequence of a step: a token, an adoption, or why it failed.
Outcome = SampleResult | Adopted | SequenceFailed


class Scheduler:
    """Waiting queue, running set and per-step selection under budget and KV capacity."""

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._to_release: list[Sequence] = []
        self._next_step_id = 1
        self.kv_capacity_tokens = 0  # min over both stages; 0 until the handshake
        self.kv_reserved_tokens = 0  # worst case of every running sequence, kept blocks apart
        self.prefix = self._new_prefix_cache() if config.enable_prefix_caching else None
        self.step_token_budget = config.step_token_budget  # lowered to what a message holds

    def set_limits(self, kv_capacity_tokens: int, max_step_tokens: int | None = None,
                   prefix_caching: bool = True) -> None:
        """What the connected pipeline allows: KV slots on both stages, tokens per message,
        prefix caching (both stages must cut blocks alike)."""
        assert max_step_tokens is None or max_step_tokens >= 1, max_step_tokens
        self.kv_capacity_tokens = kv_capacity_tokens
        self.step_token_budget = min(self.config.step_token_budget,
                                     max_step_tokens or self.config.step_token_budget)
        on = prefix_caching and self.config.enable_prefix_caching
        self.prefix = self._new_prefix_cache() if on else None  # a new worker stream keeps none

    def _new_prefix_cache(self) -> PrefixCache:
        return PrefixCache(self.config.kv_block_size)

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
            self.kv_reserved_tokens -= seq.kv_reserved_tokens
            if self.prefix is not None:
                self.prefix.release(seq.held_hashes)
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
        if (not step.seqs and not step.adopts and not step.release
                and not (self.prefix and self.prefix.to_evict)):
            return None
        if step.head_rows:  # their rows are dropped before sending: put them first
            step.seqs.sort(key=lambda s: not s.head_only)
            step.token_ids = [t for s in step.seqs
                              for t in s.seq.token_ids[s.chunk.start_pos:s.chunk.end_pos]]
        if self.prefix is not None:
            step.cache_blocks, step.evict = self.prefix.drain()
        self._next_step_id += 1
        return step

    def _seqs_per_batch(self) -> int:
        """Split the active sequences evenly over the micro-batches in flight."""
        active = min(self.config.max_num_seqs, len(self.running) + len(self.waiting))
        return max(1, math.ceil(active / self.config.max_inflight_batches))

    def _admit_next(self, step: Step) -> bool:
        """Move the oldest waiting sequence to running if a slot and its worst-case KV fit;
        it starts after the longest kept prefix of its prompt (idle kept blocks are evicted,
        least recently released first, to make room)."""
        seq = self.waiting[0]
        if len(self.running) >= self.config.max_num_seqs:
            return False
        caching = self.prefix is not None and not seq.adopting
        hits = self.prefix.hold_prompt_prefix(seq) if caching else []
        need = self._kv_need(seq) - len(hits) * self.config.kv_block_size
        if not self._make_room(need):
            if self.prefix is not None:
                self.prefix.release(hits)
            return False
        self.waiting.popleft()
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        self.kv_reserved_tokens += need
        seq.kv_reserved_tokens = need
        seq.cached_prefix, seq.held_hashes = hits, list(hits)
        seq.num_kept_blocks = len(hits)
        seq.num_computed_tokens = len(hits) * self.config.kv_block_size
        if self.prefix is not None:
            step.prefix_query_tokens += seq.num_prompt_tokens
            step.prefix_hit_tokens += seq.num_computed_tokens
        return True

    def _make_room(self, need: int) -> bool:
        """True when `need` more tokens fit next to what runs and what is kept (idle kept
        blocks are evicted, least recently released first)."""
        free = self.kv_capacity_tokens - self.kv_reserved_tokens - need
        return free >= 0 if self.prefix is None else self.prefix.make_room(free)

    def _keep_blocks(self, seq: Sequence, end_pos: int) -> None:
        """Positions [0, end_pos) are written on both stages: keep its new full blocks."""
        if self.prefix is not None and not seq.adopted:  # an adopted one's KV is not ours
            self.kv_reserved_tokens -= self.prefix.keep_written(seq, end_pos)

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
                self._keep_blocks(seq, item.chunk.end_pos)
                self._append(seq, outcome)
            elif not item.samples:
                self._keep_blocks(seq, item.chunk.end_pos)
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
        if reason is not None:
            self.finish(seq, reason)

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
        held = [s.seq_id for s in self.running + self._to_release]
        for seq in self.running:
            seq.in_flight = seq.params_sent = False
            seq.num_computed_tokens = seq.worker_pos = 0
            # the worker may still hold it (only our stream broke): ask for it first
            seq.adopting, seq.adopted = bool(seq.resume_key), False
            seq.cached_prefix, seq.held_hashes, seq.num_kept_blocks = [], [], 0
            seq.kv_reserved_tokens = self._kv_need(seq)
        self.kv_reserved_tokens = sum(s.kv_reserved_tokens for s in self.running)
        self._to_release = []  # the worker holds none of them any more
        if self.prefix is not None:
            self.prefix = self._new_prefix_cache()
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
        if self.prefix is not None:
            self.prefix = self._new_prefix_cache()  # the worker's copy went with the stream
        return held
