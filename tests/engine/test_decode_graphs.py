"""Decode steps run from static buffers (the CPU stand-in of the CUDA graphs) give the tokens
and logits of the ordinary eager steps: padded buckets, block boundaries, rows reused."""
from __future__ import annotations

import pytest
import torch

from engine.decode_graphs import batch_buckets
from engine.paged_decode import DecodeTables, decode_attention_reference

# Per step: the (seq_id, start_pos, num_tokens) chunks; decodes of 3 sequences pad to bucket 4,
# "c" crosses a 16-token block boundary, "a" leaves and "d" takes its table row.
PROMPTS = {"a": 5, "b": 14, "c": 15, "d": 9}


def schedule():
    steps = [[("a", 0, 5), ("b", 0, 14), ("c", 0, 15)]]
    for n in range(4):
        steps.append([("a", 5 + n, 1), ("b", 14 + n, 1), ("c", 15 + n, 1)])
    steps.append([("d", 0, 9), ("b", 18, 1)])  # mixed: eager with graphs of 8, else row/token
    for n in range(3):
        steps.append([("d", 9 + n, 1), ("c", 19 + n, 1), ("b", 19 + n, 1)])
    return steps


def run(pipe, prompt) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Every step's logits, and each step's greedy tokens; decodes feed back the argmax."""
    last: dict[str, int] = {}
    all_logits, tokens = [], []
    for chunks in schedule():
        if chunks[0][0] == "d" and chunks[0][2] > 1:
            for stage in pipe.stages:
                stage.release("a")
        ids = []
        for seq, start, n in chunks:
            ids += prompt(PROMPTS[seq], seed=ord(seq))[start:start + n] if n > 1 else [last[seq]]
        logits = pipe.step(chunks, ids)
        rows, row = [], 0
        for seq, _, n in chunks:
            row += n
            rows.append(row - 1)
            last[seq] = int(logits[row - 1].argmax())
        all_logits.append(logits[rows])
        tokens.append([last[seq] for seq, _, _ in chunks])
    return all_logits, tokens


def graphed_like_eager(ckpt, pipeline, prompt, max_batch: int):
    """The schedule through graph buffers of max_batch tokens, checked against eager steps."""
    eager_logits, eager_tokens = run(pipeline(ckpt, splits=(2,)), prompt)
    graphed = pipeline(ckpt, splits=(2,), cuda_graph_max_batch=max_batch)
    graph_logits, graph_tokens = run(graphed, prompt)
    assert graph_tokens == eager_tokens
    for got, want in zip(graph_logits, eager_logits):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    return graphed


def test_graph_steps_give_the_eager_tokens(ckpt, pipeline, prompt):
    graphed = graphed_like_eager(ckpt, pipeline, prompt, max_batch=8)
    for stage in graphed.stages:  # both stages ran every decode-only step from their buffers
        assert stage.decode_graphs.steps == 7


def test_prefill_and_mixed_steps_from_the_buffers_give_the_eager_tokens(ckpt, pipeline, prompt):
    """With room for every step's tokens, the prompts (34 tokens, one row each) and the mixed
    step run from the buffers too, each token attending up to itself, as eager steps do."""
    graphed = graphed_like_eager(ckpt, pipeline, prompt, max_batch=40)
    for stage in graphed.stages:
        assert stage.decode_graphs.steps == len(schedule())


def test_batch_buckets_follow_1_2_4_8_then_steps_of_8():
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert batch_buckets(1) == [1]
    with pytest.raises(ValueError, match="cuda_graph_max_batch"):
        batch_buckets(0)


@pytest.mark.parametrize("heads,kv_heads,dk,dv", [(8, 2, 32, 32), (4, 1, 40, 32)])
def test_paged_decode_equals_attention_over_the_gathered_context(heads, kv_heads, dk, dv):
    """Blocks in scattered order, lengths cutting blocks: the same as softmax(q k^T) v."""
    g = torch.Generator().manual_seed(0)
    bs, lens = 4, [1, 7, 12]
    k_cache = torch.randn(64, kv_heads, dk, generator=g)
    v_cache = torch.randn(64, kv_heads, dv, generator=g)
    table = torch.randperm(16, generator=g).to(torch.int32).view(4, 4)
    q = torch.randn(3, heads, dk, generator=g)
    rows = [2, 0, 3]
    got = decode_attention_reference(q, k_cache, v_cache, DecodeTables(
        table, torch.tensor(rows, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32), bs), 0.3)
    for b, (row, n) in enumerate(zip(rows, lens)):
        slots = torch.tensor([int(table[row, p // bs]) * bs + p % bs for p in range(n)])
        for h in range(heads):
            kv = h // (heads // kv_heads)
            probs = (k_cache[slots, kv] @ q[b, h] * 0.3).softmax(0)
            torch.testing.assert_close(got[b, h], probs @ v_cache[slots, kv], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("max_batch, steps", [(8, 7), (40, 9)])
def test_captured_cuda_graphs_give_the_uncaptured_tokens(ckpt, pipeline, prompt, max_batch,
                                                         steps):
    """On a GPU host, bf16 as served: replayed graphs, every bucket captured at load, give
    exactly what the same kernels give launched one by one (the CPU tests above tie those to
    the ordinary eager path); with room for 40 tokens the prompts and the mixed step too."""
    kwargs = dict(splits=(2,), device="cuda:0", dtype="bfloat16", cuda_graph_max_batch=max_batch)
    plain = pipeline(ckpt, **kwargs)
    for stage in plain.stages:
        stage.decode_graphs.capture = False
    want_logits, want = run(plain, prompt)
    graphed = pipeline(ckpt, **kwargs)
    got_logits, got = run(graphed, prompt)
    for stage in graphed.stages:
        assert stage.decode_graphs.capture_error is None
        assert set(stage.decode_graphs.graphs) == set(batch_buckets(max_batch))
        assert stage.decode_graphs.steps == steps
    assert got == want
    for a, b in zip(got_logits, want_logits):
        assert torch.equal(a, b)
