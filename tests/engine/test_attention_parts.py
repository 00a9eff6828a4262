"""A step mixing decodes with prompt chunks attends as two batches: the decodes' queries are not
padded to the longest chunk, and each part gives what the whole padded batch gives."""
from __future__ import annotations

import torch

from engine.attention import padded_attention, paged_attention, step_parts
from engine.batch import SeqChunk, StepBatch
from engine.kv_cache import KVCache

HEADS, KV_HEADS, DIM = 4, 2, 8


def cache_and_step(chunks: list[SeqChunk]) -> tuple[KVCache, StepBatch]:
    kv = KVCache([(KV_HEADS, DIM)] * 2, {0: torch.device("cpu")}, 1 << 20, block_size=4)
    kv.reserve_all((c.seq_id, c.end_pos) for c in chunks)
    for cache in kv.layers[0]:
        cache.normal_(generator=torch.Generator().manual_seed(1))
    return kv, StepBatch(tuple(chunks))


MIXED = [SeqChunk("a", 30, 1), SeqChunk("b", 0, 9), SeqChunk("c", 5, 1), SeqChunk("d", 3, 4)]


def test_decodes_and_chunks_split_by_rows():
    kv, step = cache_and_step(MIXED)
    parts = step_parts(kv.build_context(step))
    assert parts.mixed
    assert parts.decode_rows.tolist() == [0, 10]  # a's token, then c's after b's nine
    assert parts.prefill_rows.tolist() == list(range(1, 10)) + [11, 12, 13, 14]
    assert parts.decode.query_start == [0, 1, 2]  # one query each: nothing padded to nine
    assert parts.decode.context_lens == [31, 6] and parts.prefill.context_lens == [9, 7]
    assert parts.prefill.context_slots.shape[1] == 9  # not the decodes' 31


def test_one_kind_steps_are_not_split():
    kv, step = cache_and_step([SeqChunk("a", 7, 1), SeqChunk("b", 2, 1)])
    ctx = kv.build_context(step)
    assert step_parts(ctx).decode is ctx and step_parts(ctx).prefill is None
    kv, step = cache_and_step([SeqChunk("a", 0, 5), SeqChunk("b", 2, 3)])
    ctx = kv.build_context(step)
    assert step_parts(ctx).prefill is ctx and step_parts(ctx).decode is None


def test_split_attention_equals_the_padded_batch():
    kv, step = cache_and_step(MIXED)
    g = torch.Generator().manual_seed(0)
    t = step.num_tokens
    q = torch.randn(t, HEADS, DIM, generator=g)
    k, v = (torch.randn(t, KV_HEADS, DIM, generator=g) for _ in range(2))
    split = paged_attention(q, k, v, kv.layers[0], kv.build_context(step), DIM**-0.5)
    padded = padded_attention(q, *kv.layers[0], kv.build_context(step), DIM**-0.5)
    torch.testing.assert_close(split, padded, atol=1e-6, rtol=0)
