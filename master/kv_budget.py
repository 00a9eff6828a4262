"""The scheduler's KV accounting: the pipeline's capacity (the smaller of both stages), each
running sequence's worst case (prompt + max_tokens, whole blocks) and, with prefix caching
(master/prefix_cache.py), the blocks kept on both stages, counted once. The scheduler decides
the order; this decides what fits."""
from __future__ import annotations

import math

from master.prefix_cache import PrefixCache
from master.sequence import Sequence


class KVBudget:
    """Token slots reserved against the pipeline's KV capacity, kept prefix blocks apart."""

    def __init__(self, block_size: int, prefix_caching: bool):
        self.block_size = block_size
        self.prefix_caching = prefix_caching  # configured; the pipeline may refuse it
        self.capacity_tokens = 0  # min over both stages; 0 until the handshake
        self.reserved_tokens = 0  # worst case of every running sequence, kept blocks apart
        self.prefix = PrefixCache(block_size) if prefix_caching else None

    def set_capacity(self, capacity_tokens: int, prefix_caching: bool) -> None:
        """A new pipeline stream: its capacity, and an empty prefix cache if both stages cut
        blocks alike (a new worker stream keeps none)."""
        self.capacity_tokens = capacity_tokens
        on = prefix_caching and self.prefix_caching
        self.prefix = PrefixCache(self.block_size) if on else None

    def need(self, seq: Sequence) -> int:
        """The sequence's worst case, in whole blocks."""
        return math.ceil(seq.max_len / self.block_size) * self.block_size

    def reserve(self, seq: Sequence) -> bool:
        """Reserve a new sequence's worst case after the longest kept prefix of its prompt
        (idle kept blocks are evicted, least recently released first, to make room); False,
        holding nothing, when it does not fit."""
        caching = self.prefix is not None and not seq.adopting  # adopted: the worker's KV
        hits = self.prefix.hold_prompt_prefix(seq) if caching else []
        need = self.need(seq) - len(hits) * self.block_size
        free = self.capacity_tokens - self.reserved_tokens - need
        if not (free >= 0 if self.prefix is None else self.prefix.make_room(free)):
            if self.prefix is not None:
                self.prefix.release(hits)
            return False
        self.reserved_tokens += need
        seq.kv_reserved_tokens = need
        seq.cached_prefix, seq.held_hashes = hits, list(hits)
        seq.num_kept_blocks = len(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        return True

    def release(self, seq: Sequence) -> None:
        """A running sequence ended: its reservation and its hold on kept blocks go."""
        self.reserved_tokens -= seq.kv_reserved_tokens
        if self.prefix is not None:
            self.prefix.release(seq.held_hashes)

    def keep_written(self, seq: Sequence, end_pos: int) -> None:
        """Positions [0, end_pos) are written on both stages: keep its new full blocks."""
        if self.prefix is not None and not seq.adopted:  # an adopted one's KV is not shared
            self.reserved_tokens -= self.prefix.keep_written(seq, end_pos)

    def rebuild(self, running: list[Sequence]) -> None:
        """The kept blocks went with the worker: each running sequence holds none and
        reserves its whole worst case again."""
        for seq in running:
            seq.cached_prefix, seq.held_hashes, seq.num_kept_blocks = [], [], 0
            seq.kv_reserved_tokens = self.need(seq)
        self.reserved_tokens = sum(s.kv_reserved_tokens for s in running)
        self._forget_kept()

    def clear(self) -> None:
        """Nothing runs any more and the worker's kept blocks went with its stream."""
        self.reserved_tokens = 0
        self._forget_kept()

    def _forget_kept(self) -> None:
        if self.prefix is not None:
            self.prefix = PrefixCache(self.block_size)
