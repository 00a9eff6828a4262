"""Native FP8: weights stay e4m3 + block scales; the GEMM arithmetic against dequantize mode.

On the CPU, native mode is refused (and the stage says so); the kernel's arithmetic runs as its
torch reference, which a test switches on to check the conversion, loading and MoE paths.
The Triton kernel itself is checked by tests/engine/test_fp8_native_cuda.py on a GPU.
"""
from __future__ import annotations

import logging
from unittest import mock

import pytest
import torch

import engine.fp8_gemm as fp8_gemm
import engine.stage as stage_module
from engine.batch import SeqChunk, StepBatch
from engine.fp8 import quantize_block_fp8
from engine.fp8_gemm import block_table, fp8_matmul, max_tiles, quantize_activations
from engine.fp8_native import FP8Linear, fp8_mode
from engine.stage import Stage

KV = 2**22


@pytest.fixture
def native_on_cpu(monkeypatch):
    """Let Stage.load take the native path on the CPU (the GEMMs run their torch reference)."""
    monkeypatch.setattr(stage_module, "fp8_mode", lambda requested, device, block: (
        requested, "test: torch reference of the kernel"))


def test_cpu_refuses_native_and_says_so(tiny_checkpoint, caplog):
    ckpt = tiny_checkpoint("deepseek_v3", fp8=True)
    with caplog.at_level(logging.INFO, logger="duet.engine.load"):
        stage = Stage.load(ckpt, 1, 4, kv_cache_bytes=KV, fp8="native")
    assert "FP8 weights dequantized (cpu has no FP8 matrix units)" in caplog.text
    assert all(p.dtype == torch.float32 for p in stage.model.parameters())
    assert fp8_mode("native", torch.device("cpu"), (128, 128))[0] == "dequantize"
    with pytest.raises(ValueError, match="fp8 must be one of native, dequantize"):
        Stage.load(ckpt, 1, 4, kv_cache_bytes=KV, fp8="fp4")


def test_native_stage_holds_checkpoint_bytes(tiny_checkpoint, native_on_cpu, caplog):
    ckpt = tiny_checkpoint("deepseek_v3", fp8=True)
    with caplog.at_level(logging.INFO, logger="duet.engine.load"):
        native = Stage.load(ckpt, 1, 4, kv_cache_bytes=KV, dtype="bfloat16", fp8="native")
    deq = Stage.load(ckpt, 1, 4, kv_cache_bytes=KV, dtype="bfloat16", fp8="dequantize")
    assert "FP8 native (12 linears, 3 expert stacks" in caplog.text  # 4 per layer, not kv_b
    layer = native.model.model.layers["2"]
    assert isinstance(layer.self_attn.q_a_proj, FP8Linear)
    assert layer.self_attn.kv_b_proj.weight.dtype == torch.bfloat16  # kept for absorption
    assert layer.mlp.experts.gate_up_proj.dtype == torch.float8_e4m3fn
    assert layer.mlp.experts.down_proj_scale_inv.dtype == torch.float32
    # every FP8 byte of the checkpoint is one byte here: bf16 holds those weights in two
    fp8_bytes = sum(p.numel() for p in native.model.parameters() if p.dtype == torch.float8_e4m3fn)
    assert deq.weight_bytes() - native.weight_bytes() == pytest.approx(fp8_bytes, rel=0.02)


def test_native_greedy_tokens_follow_dequantize(tiny_checkpoint, native_on_cpu, prompt, greedy):
    """fp32 stages: FP8 weights times fp32 activations, so the two modes differ only in the order
    of sums (grouped GEMM vs dequantized matmul). Why not 32 of 32 in general: random weights
    leave near-tied logits (top-2 gaps ~1e-4), which a different summation order can flip; each
    step is fed the dequantize mode's token so one flip does not derail the rest."""
    ckpt = tiny_checkpoint("deepseek_v3", fp8=True)
    native = Stage.load(ckpt, 0, 4, kv_cache_bytes=KV, fp8="native")
    deq = Stage.load(ckpt, 0, 4, kv_cache_bytes=KV, fp8="dequantize")
    for p in range(3):
        ids = prompt(12, seed=p)
        want = greedy(deq, "d", ids, 32)
        got = greedy(native, "n", ids, 32, forced=want)
        assert sum(a == b for a, b in zip(got, want)) >= 30, (p, got, want)


def test_grouped_reference_equals_per_group_linears():
    torch.manual_seed(0)
    weights = [quantize_block_fp8(torch.randn(40, 200) / 14) for _ in range(6)]  # 3 groups x 2
    w = torch.stack([q for q, _ in weights])
    s = torch.stack([sc for _, sc in weights])
    counts = torch.tensor([3, 0, 5])
    x = torch.randn(8, 200)
    got = fp8_matmul(x, w, s, counts, parts=2)
    dense = [torch.cat([fp8_matmul(x[a:b], w[2 * g + i, None], s[2 * g + i, None])
                        for i in (0, 1)], dim=1)
             for g, (a, b) in enumerate([(0, 3), (3, 3), (3, 8)])]
    torch.testing.assert_close(got, torch.cat(dense), rtol=1e-5, atol=1e-5)


def test_block_table_tiles_every_row_once():
    counts = torch.tensor([0, 5, 16, 1, 0, 33])
    bound = max_tiles(int(counts.sum()), 6, 16)
    table = block_table(counts, 16, bound)
    rows = []
    for group, first, end in table.T.tolist():
        if group >= 0:
            assert counts[: group].sum() <= first < end <= counts[: group + 1].sum()
            rows += range(first, min(first + 16, end))
    assert rows == list(range(int(counts.sum())))
    assert (table[0, -1] == -1) and bound == 4 + 6  # ceil(55/16) + one per group


def test_two_e4m3_terms_carry_bf16_activations():
    """bf16 activations go to the FP8 GEMM as two e4m3 terms (the second quantizes what the
    first left): the product stays within bf16's own error of the exact one, where DeepSeek's
    single term costs 1.5-3% per GEMM (bench/fp8/notes.md: the 3.2% prefill layer error)."""
    gen = torch.Generator().manual_seed(3)
    q, s = quantize_block_fp8(torch.randn(96, 300, generator=gen) / 17)
    x = torch.randn(20, 300, generator=gen)
    x[:, :4] *= 40  # outlier channels, as real hidden states have
    x = x.bfloat16()
    exact = x.double() @ (q.double() * s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:96, :300].double()).T
    err = {act: ((fp8_matmul(x, q[None], s[None], act=act).double() - exact).norm()
                 / exact.norm()).item() for act in ("e4m3", "e4m3x2")}
    assert err["e4m3x2"] < 4e-3 and 1e-2 < err["e4m3"] < 6e-2, err
    terms, scales = quantize_activations(x, terms=2)
    assert terms.shape == (2, 20, 300) and scales.shape == (2, 20, 3)
    with pytest.raises(ValueError, match="act must be one of"):
        fp8_matmul(x, q[None], s[None], act="e5m2")


def test_bf16_native_layer_tracks_dequantize(tiny_checkpoint, native_on_cpu):
    """The issue's accuracy target on a prefill: a bf16 MoE layer's output (its residual
    branch) within 2e-2 of the dequantized layer's on the same input. DeepSeek's single e4m3
    activation term misses it here as on V3 (13% on this 64-wide model, 3.2% on V3's layer)."""
    ckpt = tiny_checkpoint("deepseek_v3", fp8=True)
    x = torch.randn(96, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    stages = {fp8: Stage.load(ckpt, 1, 2, kv_cache_bytes=KV, dtype="bfloat16", fp8=fp8)
              for fp8 in ("native", "dequantize")}

    def branch(fp8: str, act: str | None = None) -> torch.Tensor:
        with mock.patch.object(fp8_gemm, "act_mode", (lambda dtype: act) if act else fp8_gemm.act_mode):
            out = stages[fp8].forward(StepBatch((SeqChunk(f"p{act}", 0, 96),)), x)
        return (out - x).float()

    want = branch("dequantize")
    err = {act: ((branch("native", act) - want).norm() / want.norm()).item() for act in ("e4m3", "e4m3x2")}
    assert err["e4m3x2"] < 2e-2 < 5e-2 < err["e4m3"], err


def test_fp8_siblings_pack_with_their_block_scales():
    """q_a and kv_a in native FP8 pack into one product (one activation quantization, one GEMM on
    the GPU): the siblings' weights and scales become row views of the packed tensors, and the
    packed product equals the two separate ones. Siblings whose rows would split a 128-row scale
    block stay apart."""
    from torch import nn

    from engine.packed_linear import pack_linears, packed

    gen = torch.Generator().manual_seed(4)
    parent = nn.Module()
    parent.q_a_proj, parent.kv_a_proj_with_mqa = FP8Linear(300, 256, False), FP8Linear(300, 72, False)
    assert pack_linears(parent) == 1
    both = packed(parent, "q_a_proj")
    for lin in (parent.q_a_proj, parent.kv_a_proj_with_mqa):  # a load copies into the views
        q, s = quantize_block_fp8(torch.randn(lin.out_features, 300, generator=gen) / 17)
        lin.weight.data.copy_(q)
        lin.weight_scale_inv.data.copy_(s)
    assert both.weight.shape == (328, 300) and both.scale_inv.shape == (3, 3)
    x = torch.randn(2, 300, generator=gen)
    q_a, kv_a = both.split(x)
    torch.testing.assert_close(q_a, parent.q_a_proj(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kv_a, parent.kv_a_proj_with_mqa(x), rtol=1e-6, atol=1e-6)
    straddling = nn.Module()
    straddling.q_a_proj, straddling.kv_a_proj_with_mqa = FP8Linear(300, 200, False), FP8Linear(300, 72, False)
    assert pack_linears(straddling) == 0
