"""One micro-batch as the scheduler hands it to the pipeline driver (master/wire.py turns it
into a StepRequest), and what the worker can answer for each of its sequences."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.batch import SeqChunk
from engine.sampler import SampleResult
from master.generation import SequenceFailed
from master.sequence import Sequence


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

    def head_only_first(self) -> None:
        """Put the head-only chunks first: their rows are cut off before sending."""
        if self.head_rows:
            self.seqs.sort(key=lambda s: not s.head_only)
            self.token_ids = [t for s in self.seqs
                              for t in s.seq.token_ids[s.chunk.start_pos:s.chunk.end_pos]]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def chunks(self) -> list[SeqChunk]:
        return [s.chunk for s in self.seqs]


@dataclass(frozen=True)
class Adopted:
    """The worker handed over a kept sequence (worker/orphans.py): its sampled tokens and
    the KV positions it holds."""

    output_ids: list[int]
    next_pos: int


# What the worker said about one sequence of a step: a token, an adoption, or why it failed.
Outcome = SampleResult | Adopted | SequenceFailed
