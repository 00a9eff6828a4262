"""Automatic prefix caching, decided on the master for both stages: which full KV blocks are
kept under which hash, how many running sequences hold each, which goes first when space is
needed (the least recently released).

A block's hash chains its parent's hash with its tokens, as vLLM does, so equal hashes mean
equal prefixes. The master picks every key both stages keep; the head and the worker apply
the same instructions in the same order (StepRequest.cache_blocks, then release, then evict),
so the master knows what the worker can attach without asking it. A block is kept only once
the worker answered the step that wrote it, so a failed step never leaves a key behind.
"""
from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence

from master.sequence import Sequence as Seq

ROOT_HASH = 0  # the parent of a sequence's first block


def hash_block(parent: int, tokens: Sequence[int]) -> int:
    """64-bit hash of a full block given its parent's hash (same on every host)."""
    h = hashlib.blake2b(struct.pack(f"<Q{len(tokens)}q", parent, *tokens), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def extend_hashes(hashes: list[int], token_ids: Sequence[int], num_blocks: int,
                  block_size: int) -> list[int]:
    """Grow `hashes` (one per full block, in order) to cover `num_blocks` blocks."""
    for i in range(len(hashes), num_blocks):
        tokens = token_ids[i * block_size:(i + 1) * block_size]
        assert len(tokens) == block_size, f"block {i} is not full"
        hashes.append(hash_block(hashes[-1] if hashes else ROOT_HASH, tokens))
    return hashes


class PrefixCache:
    """Hash -> holders of the kept block; blocks nobody holds wait for eviction in LRU order;
    what both stages must do next (keep, evict) waits for the next step."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._holders: dict[int, int] = {}  # hash -> running sequences holding its block
        self._idle: OrderedDict[int, None] = OrderedDict()  # held by none, least recent first
        self.to_keep: list[tuple[str, int, int]] = []  # (seq_id, block index, hash)
        self.to_evict: list[int] = []

    def drain(self) -> tuple[list[tuple[str, int, int]], list[int]]:
        """The keep and evict instructions of the next step (Step.cache_blocks, Step.evict)."""
        out = (self.to_keep, self.to_evict)
        self.to_keep, self.to_evict = [], []
        return out

    def hold_prompt_prefix(self, seq: Seq) -> list[int]:
        """The kept blocks a new sequence starts on, now held by it; one prompt token is
        always left to compute, so the last chunk has a row to sample from."""
        num_blocks = (seq.num_prompt_tokens - 1) // self.block_size
        extend_hashes(seq.block_hashes, seq.token_ids, num_blocks, self.block_size)
        hits = self.match(seq.block_hashes[:num_blocks])
        self.acquire(hits)
        return hits

    def make_room(self, free_tokens: int) -> bool:
        """Evict idle blocks until the kept ones fit in `free_tokens`; False if they cannot."""
        while self.num_blocks * self.block_size > free_tokens:
            h = self.evict_idle()
            if h is None:
                return False
            self.to_evict.append(h)
        return True

    def keep_written(self, seq: Seq, end_pos: int) -> int:
        """Positions [0, end_pos) of `seq` are written on both stages: keep its new full
        blocks. Returns the tokens that moved from its own reservation to the kept blocks."""
        full = end_pos // self.block_size
        if full <= seq.num_kept_blocks:
            return 0
        extend_hashes(seq.block_hashes, seq.token_ids, full, self.block_size)
        moved = 0
        for index in range(seq.num_kept_blocks, full):
            h = seq.block_hashes[index]
            if self.add(h):  # else an equal block is kept already: this copy stays its own
                seq.held_hashes.append(h)
                self.to_keep.append((seq.seq_id, index, h))
                moved += self.block_size
        seq.num_kept_blocks = full
        seq.kv_reserved_tokens -= moved
        return moved

    @property
    def num_blocks(self) -> int:
        """Blocks kept on both stages, held or not: each counts once against the KV capacity."""
        return len(self._holders)

    @property
    def num_idle(self) -> int:
        return len(self._idle)

    def match(self, hashes: Sequence[int]) -> list[int]:
        """The longest kept prefix of `hashes`."""
        n = 0
        while n < len(hashes) and hashes[n] in self._holders:
            n += 1
        return list(hashes[:n])

    def acquire(self, hashes: Sequence[int]) -> None:
        """A sequence now holds these kept blocks."""
        for h in hashes:
            self._holders[h] += 1
            self._idle.pop(h, None)

    def release(self, hashes: Sequence[int]) -> None:
        """A sequence let these blocks go (in prefix order); a block nobody holds becomes the
        most recent idle. Reversed, as vLLM does: a prefix's tail is evicted before its head,
        which every longer match needs."""
        for h in reversed(hashes):
            if h not in self._holders:
                continue  # evicted by a reset while the sequence ran
            self._holders[h] -= 1
            if self._holders[h] == 0:
                self._idle[h] = None

    def add(self, h: int) -> bool:
        """Keep a block its writer holds; False if an equal block is already kept."""
        if h in self._holders:
            return False
        self._holders[h] = 1
        return True

    def evict_idle(self) -> int | None:
        """Drop the least recently released block nobody holds; None if there is none."""
        if not self._idle:
            return None
        h, _ = self._idle.popitem(last=False)
        del self._holders[h]
        return h

