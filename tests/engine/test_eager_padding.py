"""Eager products at padded row counts, and the load-time warm-up that runs each count once
(engine/gemv.py, engine/eager_warmup.py). The padding itself only engages on CUDA (a CPU has no
kernel choice to pay for); its arithmetic is checked here on the CPU, its effect on the GPU in
bench/gpu/prefill_probe.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import gemv
from engine.batch import SeqChunk, StepBatch
from engine.eager_warmup import WARM_SEQ, eager_row_counts, warm_eager_steps
from engine.stage import Stage


def test_rows_past_the_graphs_round_up_to_a_multiple_of_64():
    assert [gemv.padded_rows(n) for n in (1, 64, 128)] == [1, 64, 128]
    assert [gemv.padded_rows(n) for n in (129, 192, 193, 2000, 2048)] == [192, 192, 256, 2048, 2048]


def test_warm_counts_cover_every_padded_count_up_to_the_budget():
    assert eager_row_counts(128) == []
    assert eager_row_counts(300) == [192, 256, 320]
    assert {gemv.padded_rows(n) for n in range(129, 2049)} == set(eager_row_counts(2048))


@pytest.mark.parametrize("rows", [129, 200, 257])
def test_padded_products_equal_the_plain_ones(rows):
    g = torch.Generator().manual_seed(rows)
    x, w, b = (torch.randn(*s, generator=g) for s in ((rows, 48), (40, 48), (40,)))
    r = torch.randn(rows, 40, generator=g)
    torch.testing.assert_close(gemv.padded_linear(x, w, b), F.linear(x, w, b))
    assert gemv.padded_linear(x, w, b).shape == (rows, 40)
    for bias in (None, b):  # the residual updated in place, with or without a bias
        mine = r.clone()
        out = gemv.padded_linear(x, w, bias, residual=mine)
        assert out.data_ptr() == mine.data_ptr()
        torch.testing.assert_close(mine, r + F.linear(x, w, bias))


@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3"])
def test_the_warm_up_leaves_the_cache_and_the_outputs_as_they_were(arch, tiny_checkpoint, prompt):
    model = tiny_checkpoint(arch)
    head, tail = Stage.load(model, 0, 2, kv_cache_bytes=2**20), Stage.load(model, 2, 4,
                                                                          kv_cache_bytes=2**20)

    def step(seq: str) -> torch.Tensor:
        batch = StepBatch((SeqChunk(seq, 0, 150),))
        out = tail.compute_logits(tail.forward(batch, head.forward(
            batch, torch.tensor(prompt(150)))))
        head.release(seq)
        tail.release(seq)
        return out

    before = step("a")
    assert all(s.kv.capacity_tokens >= 2000 for s in (head, tail))  # the mixed step runs too
    free = [len(s.kv._free) for s in (head, tail)]
    for stage in (head, tail):
        warm_eager_steps(stage, max_tokens=300)
    assert [len(s.kv._free) for s in (head, tail)] == free
    assert all(s.kv.used_tokens == 0 and s.kv.num_seqs == 0 for s in (head, tail))
    torch.testing.assert_close(step("b"), before, rtol=0, atol=0)


def test_a_cache_smaller_than_the_budget_warms_what_fits(tiny_checkpoint):
    stage = Stage.load(tiny_checkpoint("qwen2"), 0, 2, kv_cache_bytes=2**18)
    assert 192 < stage.kv.capacity_tokens < 2048
    warm_eager_steps(stage)  # no KVCacheFull: counts past the free slots are left out
    assert stage.kv.used_tokens == 0
