"""KVCache: capacity from a byte budget, block accounting, all-or-nothing reservation, contexts."""
from __future__ import annotations

import pytest
import torch

from engine.batch import SeqChunk, StepBatch
from engine.kv_cache import KVCache, KVCacheFull

SHAPES = [(2, 8), (2, 8)]  # keys and values: 2 heads x 8 dims
TOKEN_BYTES = 2 * 16 * 4  # per layer, fp32


def make(blocks: int, layers: int = 2, block_size: int = 4) -> KVCache:
    devices = {i: torch.device("cpu") for i in range(layers)}
    budget = blocks * block_size * TOKEN_BYTES * layers + 7  # leftovers do not make a block
    return KVCache(SHAPES, devices, budget, block_size=block_size, dtype=torch.float32)


def step(*chunks) -> StepBatch:
    return StepBatch(tuple(SeqChunk(*c) for c in chunks))


def test_capacity_comes_from_the_byte_budget_in_whole_blocks():
    kv = make(blocks=5)
    assert kv.capacity_tokens == 20 and kv.used_tokens == 0 and kv.usage == 0
    assert set(kv.layers) == {0, 1}
    k, v = kv.layers[0]
    assert k.shape == (24, 2, 8) and v.shape == (24, 2, 8)  # and the scratch block of graph padding
    assert kv.bytes_per_token == 2 * TOKEN_BYTES


def test_a_budget_below_one_block_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="kv_cache_bytes"):
        KVCache(SHAPES, {0: torch.device("cpu")}, 100, block_size=16)


def test_reserve_grows_by_blocks_and_release_returns_them():
    kv = make(blocks=5)
    kv.reserve("a", 5)  # 2 blocks
    kv.reserve("a", 8)  # still 2
    kv.reserve("b", 1)
    assert (kv.used_tokens, kv.num_seqs, kv.usage) == (12, 2, 0.6)
    kv.release("a")
    kv.release("a")  # twice is harmless
    assert (kv.used_tokens, kv.num_seqs) == (4, 1)


def test_reservation_that_does_not_fit_names_the_sequence_and_changes_nothing():
    kv = make(blocks=3)
    kv.reserve("a", 4)
    with pytest.raises(KVCacheFull) as info:
        kv.reserve_all([("b", 4), ("c", 8)])  # b fits, c does not: neither is taken
    assert info.value.seq_id == "c" and info.value.free_tokens == 4  # after b
    assert kv.used_tokens == 4 and kv.num_seqs == 1
    kv.reserve_all([("b", 4), ("c", 4)])
    assert kv.usage == 1.0


def test_context_maps_positions_to_the_sequences_own_slots():
    kv = make(blocks=6)
    kv.reserve("x", 2)  # block 0 goes to x, so y's blocks are not the first ones
    batch = step(("y", 0, 6))
    kv.reserve_all((c.seq_id, c.end_pos) for c in batch.chunks)
    ctx = kv.build_context(batch)
    assert ctx.positions.tolist() == list(range(6))
    assert ctx.context_lens == [6] and ctx.query_start == [0, 6]
    y_slots = ctx.context_slots[0].tolist()
    assert ctx.slot_mapping.tolist() == y_slots and len(set(y_slots)) == 6
    assert not set(y_slots) & set(range(4))  # block 0 (slots 0..3) belongs to x


def test_mixed_step_context_pads_and_masks_per_sequence():
    kv = make(blocks=8)
    kv.reserve("a", 3)
    kv.build_context(step(("a", 0, 3)))  # a now holds 3 tokens
    batch = step(("a", 3, 1), ("b", 0, 5))
    kv.reserve_all((c.seq_id, c.end_pos) for c in batch.chunks)
    ctx = kv.build_context(batch)
    assert ctx.positions.tolist() == [3, 0, 1, 2, 3, 4]
    assert ctx.query_start == [0, 1, 6] and ctx.context_lens == [4, 5]
    assert ctx.context_mask.tolist() == [[True] * 4 + [False], [True] * 5]
    assert ctx.context_slots[0, 4] == 0  # padding is slot 0
    assert ctx.slot_mapping[0] == ctx.context_slots[0, 3]
    assert ctx.slot_mapping[1:].tolist() == ctx.context_slots[1].tolist()


@pytest.mark.parametrize(
    "chunks, message",
    [
        ((("a", 5, 1),), "starts at position 5 but the cache holds 0"),
        ((("a", 0, 2), ("a", 2, 1)), "appears twice"),
        ((), "no sequences"),
    ],
)
def test_steps_that_do_not_continue_the_cache_are_refused(chunks, message):
    with pytest.raises(ValueError, match=message):
        make(blocks=4).check_batch(step(*chunks))
