"""What one API stream may hold on the tail: sequences and KV token slots.

The worker serves two streams in normal operation (the master's and the standby's); without a
per-stream limit one stream (a runaway client, or anyone who can reach the port) could reserve
every KV block and every other stream's requests would fail. Usage is counted in whole KV
blocks, as the cache hands them out: a one-token sequence holds a full block.
"""
from __future__ import annotations

import math
from collections import defaultdict


class StreamQuotaExceeded(Exception):
    """A reservation would take a stream past its share; the message says which limit."""


class StreamQuota:
    """Per stream: the token slots each of its sequences holds, against two limits."""

    def __init__(self, capacity_tokens: int, block_size: int, kv_share: float, max_seqs: int):
        self.block_size = block_size
        # whole blocks, and at least one so a stream can always run a short sequence
        blocks = max(1, math.floor(capacity_tokens * kv_share / block_size))
        self.kv_tokens = min(capacity_tokens, blocks * block_size)
        self.capacity_tokens = capacity_tokens
        self.max_seqs = max_seqs
        self._held: dict[str, dict[str, int]] = defaultdict(dict)  # stream -> key -> tokens
        self._totals: dict[str, int] = defaultdict(int)  # stream -> sum of its _held
        self._kept: dict[str, int] = {}  # stream -> tokens of its kept prefix blocks (once)

    def held_tokens(self, stream: str) -> int:
        return self._totals.get(stream, 0) + self._kept.get(stream, 0)

    def set_kept(self, stream: str, tokens: int) -> None:
        """Blocks kept for prefix caching count once, beside the sequences holding them."""
        if tokens:
            self._kept[stream] = tokens
        else:
            self._kept.pop(stream, None)

    def check(self, stream: str, key: str, end_pos: int) -> None:
        """Raise StreamQuotaExceeded if `key` holding [0, end_pos) breaks a limit of `stream`."""
        held = self._held.get(stream, {})
        if key not in held and len(held) >= self.max_seqs:
            raise StreamQuotaExceeded(f"this stream already holds {len(held)} sequences, "
                                      f"its limit (stream_max_seqs = {self.max_seqs})")
        if self.kv_tokens == self.capacity_tokens:
            return  # a share of the whole cache: the cache itself says when it is full
        want = math.ceil(end_pos / self.block_size) * self.block_size
        total = self.held_tokens(stream) - held.get(key, 0) + want
        if total > self.kv_tokens:
            raise StreamQuotaExceeded(
                f"this stream would hold {total} KV token slots, over its share of "
                f"{self.kv_tokens} (stream_kv_share of the worker's KV cache)")

    def record(self, stream: str, key: str, end_pos: int) -> None:
        """`key` now holds [0, end_pos) (called after the cache reserved it, or with less once
        some of its blocks count as the stream's kept prefix blocks)."""
        tokens = math.ceil(end_pos / self.block_size) * self.block_size
        old = self._held[stream].get(key, 0)
        if tokens != old:
            self._held[stream][key] = tokens
            self._totals[stream] += tokens - old

    def release(self, stream: str, key: str) -> None:
        held = self._held.get(stream)
        if held is not None and key in held:
            self._totals[stream] -= held.pop(key)
            if not held:  # its kept blocks stay counted
                self._held.pop(stream, None)
                self._totals.pop(stream, None)

    def drop_stream(self, stream: str) -> None:
        self._held.pop(stream, None)
        self._totals.pop(stream, None)
        self._kept.pop(stream, None)
