"""KVCache prefix blocks: kept under a key, shared by reference, freed once, evicted on order."""
from __future__ import annotations

import pytest
import torch

from engine.batch import SeqChunk, StepBatch
from engine.kv_cache import KVCache, KVCacheFull

SHAPES = [(2, 8), (2, 8)]
TOKEN_BYTES = 2 * 16 * 4


def make(blocks: int, block_size: int = 4) -> KVCache:
    budget = blocks * block_size * TOKEN_BYTES
    return KVCache(SHAPES, {0: torch.device("cpu")}, budget, block_size=block_size)


def write(kv: KVCache, seq_id: str, end_pos: int, start_pos: int = 0) -> None:
    kv.reserve(seq_id, end_pos)
    kv.mark_written(StepBatch((SeqChunk(seq_id, start_pos, end_pos - start_pos),)))


def test_a_kept_block_outlives_its_writer_and_is_shared_by_the_next_sequence():
    kv = make(blocks=4)
    write(kv, "a", 6)  # blocks 0 (full) and 1 (half)
    kv.cache_block("a", 0, "h0")
    kv.release("a")
    assert kv.used_tokens == 0 and kv.cached_tokens == 4  # idle kept blocks count as free
    kv.attach("b", ["h0"])
    kv.attach("c", ["h0"])
    assert kv.seq_len("b") == 4 and kv.used_tokens == 4  # one shared block, counted once
    assert kv._tables["b"][0] == kv._tables["c"][0]
    kv.reserve("b", 9)  # its own blocks after the shared one
    assert kv.used_tokens == 12
    kv.release("b")
    kv.release("c")
    assert kv.used_tokens == 0 and kv.cached_tokens == 4
    kv.evict("h0")
    assert kv.cached_tokens == 0 and len(kv._free) == kv.num_blocks


def test_eviction_while_held_frees_the_block_with_its_last_holder_only():
    kv = make(blocks=2)
    write(kv, "a", 4)
    kv.cache_block("a", 0, "h0")
    kv.attach("b", ["h0"])
    kv.evict("h0")  # no longer found, still in use by a and b
    assert not kv.has_cached("h0") and kv.used_tokens == 4
    kv.release("a")
    assert kv.used_tokens == 4
    kv.release("b")
    assert kv.used_tokens == 0 and sorted(kv._free) == [0, 1]


def test_kept_idle_blocks_take_room_until_evicted():
    kv = make(blocks=2)
    write(kv, "a", 8)
    kv.cache_block("a", 0, "h0")
    kv.cache_block("a", 1, "h1")
    kv.release("a")
    with pytest.raises(KVCacheFull):
        kv.reserve("b", 1)  # the master evicts before it asks for room
    kv.evict("h1")
    kv.reserve("b", 1)


def test_only_a_full_written_block_can_be_kept_and_only_known_keys_attached():
    kv = make(blocks=3)
    write(kv, "a", 6)
    with pytest.raises(ValueError, match="no full block 1"):
        kv.cache_block("a", 1, "h1")
    with pytest.raises(KeyError, match="nope"):
        kv.attach("b", ["nope"])
    assert kv.num_seqs == 1
    kv.cache_block("a", 0, "h0")
    kv.cache_block("a", 0, "other")  # a block is kept under one key; the second is ignored
    assert not kv.has_cached("other")


def test_attached_blocks_feed_the_context_of_the_rest_of_the_prompt():
    kv = make(blocks=4)
    write(kv, "a", 4)
    kv.cache_block("a", 0, "h0")
    kv.attach("b", ["h0"])
    kv.reserve("b", 6)
    ctx = kv.build_context(StepBatch((SeqChunk("b", 4, 2),)))
    shared = kv._tables["a"][0]
    assert ctx.context_slots[0, :4].tolist() == [shared * 4 + i for i in range(4)]
    assert ctx.positions.tolist() == [4, 5]
