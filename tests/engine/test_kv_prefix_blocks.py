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


def test_used_tokens_counts_the_blocks_sequences_hold_through_any_order_of_operations():
    """used_tokens is kept as blocks change hands (not summed per step): after each of 400
    random keeps, attaches, releases and evictions it equals the distinct blocks held."""
    import random

    rng, kv, live, n, idle_seen = random.Random(0), make(blocks=64), set(), 0, 0
    for _ in range(400):
        op = rng.choice(("new", "keep", "keep", "attach", "release", "release", "evict"))
        if op == "new" and len(kv._free) >= 3:
            n += 1
            write(kv, f"s{n}", rng.randint(1, 12))
            live.add(f"s{n}")
        elif op == "keep" and live:
            seq = rng.choice(sorted(live))
            full = kv.seq_len(seq) // kv.block_size
            if full:
                kv.cache_block(seq, rng.randrange(full), f"k{rng.randrange(20)}")
        elif op == "attach" and kv._keyed:
            n += 1
            kv.attach(f"s{n}", rng.sample(sorted(kv._keyed), 1))
            live.add(f"s{n}")
        elif op == "release" and live:
            seq = rng.choice(sorted(live))
            kv.release(seq)
            live.discard(seq)
        elif op == "evict" and kv._keyed:
            kv.evict(rng.choice(sorted(kv._keyed)))
        held = {b for table in kv._tables.values() for b in table}
        assert kv.used_tokens == len(held) * kv.block_size, op
        idle_seen = max(idle_seen, len(kv._keyed) - len(held & set(kv._keyed.values())))
    assert idle_seen > 2  # kept blocks nobody held were there to count
