"""The prefix-cache blocks each API stream told the worker to keep (master/prefix_cache.py
decides; this side only obeys). Keys are per stream: two APIs keep their blocks apart, and a
stream's blocks go with it, so an API that reconnects starts from an empty cache, as it
expects."""
from __future__ import annotations

import logging

from engine.kv_cache import KVCache

log = logging.getLogger(__name__)


class StreamBlocks:
    """Stream -> the hashes it keeps in the tail's KV cache."""

    def __init__(self, kv: KVCache):
        self.kv = kv
        self._kept: dict[str, set[int]] = {}

    @staticmethod
    def key(stream: str, h: int) -> str:
        return f"{stream}/{h:016x}"

    def kept_tokens(self, stream: str) -> int:
        return len(self._kept.get(stream, ())) * self.kv.block_size

    def keep(self, stream: str, seq_key: str, index: int, h: int) -> bool:
        """Keep a written block of the stream's sequence; False (and a log line) if it has no
        such block: a later sequence that asks for it fails instead of reading garbage."""
        try:
            self.kv.cache_block(seq_key, index, self.key(stream, h))
        except ValueError as e:
            log.warning("cannot keep prefix block %016x: %s", h, e)
            return False
        self._kept.setdefault(stream, set()).add(h)
        return True

    def evict(self, stream: str, h: int) -> None:
        self.kv.evict(self.key(stream, h))
        self._kept.get(stream, set()).discard(h)

    def attach(self, stream: str, seq_key: str, hashes: list[int]) -> None:
        """Start a new sequence on kept blocks; KeyError names one the worker does not keep."""
        self.kv.attach(seq_key, [self.key(stream, h) for h in hashes])

    def drop_stream(self, stream: str) -> None:
        """The stream ended: its blocks are free once no sequence holds them."""
        for h in self._kept.pop(stream, set()):
            self.kv.evict(self.key(stream, h))
