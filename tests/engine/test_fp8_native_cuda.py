"""Native FP8 on a GPU (compute capability >= 8.9, triton): the kernel and a whole stage.

Skipped without one; bench/fp8/run_device.sh runs this file on the lent H200.
"""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from engine.fp8 import dequantize_block_fp8, quantize_block_fp8
from engine.fp8_gemm import fp8_matmul, reference_fp8_matmul, triton_available
from engine import gemv, moe_gemv, router_select
from engine.fp8_native import FP8Linear
from engine.models.moe import MoESpec, Router
from engine.stage import Stage

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
         and triton_available()),
    reason="native FP8 needs a CUDA GPU of compute capability >= 8.9 and triton",
)


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def fp8_weights(groups: int, n: int, k: int):
    pairs = [quantize_block_fp8(torch.randn(n, k, device="cuda") / k**0.5) for _ in range(groups)]
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])


@pytest.mark.parametrize("m", [1, 7, 64, 65, 300])  # each new shape compiles (~seconds)
@pytest.mark.parametrize("n,k", [(576, 7168), (200, 300)])
@pytest.mark.parametrize("act,dtype,budget", [(None, torch.bfloat16, 1e-2), ("e4m3", torch.bfloat16, 4e-2),
                                              (None, torch.float32, 1e-5)])
def test_kernel_matches_reference_and_dequantized(m, n, k, act, dtype, budget):
    """Two e4m3 activation terms (bf16's default) stay within bf16's own error of the dequantized
    product, one term (DeepSeek's) within ~3%; fp32 activations multiply exactly."""
    q, s = fp8_weights(1, n, k)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    out = fp8_matmul(x, q, s, act=act)
    assert out.isfinite().all()
    assert rel(out, reference_fp8_matmul(x, q, s, act=act)) < max(budget / 2, 1e-5)
    deq = torch.nn.functional.linear(x.double(), dequantize_block_fp8(q[0], s[0]).double())
    assert rel(out, deq) < budget


@pytest.mark.parametrize("rows", [1, 9, 200, 2000])
def test_grouped_kernel_matches_reference(rows):
    q, s = fp8_weights(2 * 9, 256, 512)
    counts = torch.distributions.Multinomial(rows, torch.ones(9)).sample().long().cuda()
    counts[4] = 0
    counts[0] += rows - int(counts.sum())
    x = torch.randn(rows, 512, device="cuda", dtype=torch.bfloat16)
    out = fp8_matmul(x, q, s, counts, parts=2)
    assert out.isfinite().all()
    assert rel(out, reference_fp8_matmul(x, q, s, counts, parts=2)) < 1e-2


def test_native_stage_on_gpu_tracks_dequantize(tiny_checkpoint, prompt, greedy):
    ckpt = tiny_checkpoint("deepseek_v3", fp8=True, tokenizer=False)
    native = Stage.load(ckpt, 0, 4, device="cuda", kv_cache_bytes=2**22, fp8="native")
    deq = Stage.load(ckpt, 0, 4, device="cuda", kv_cache_bytes=2**22, fp8="dequantize")
    assert isinstance(native.model.model.layers["1"].self_attn.o_proj, FP8Linear)
    layer_bytes = [sum(p.numel() * p.element_size() for p in s.model.model.layers.parameters())
                   for s in (native, deq)]
    assert layer_bytes[0] < 0.4 * layer_bytes[1]  # e4m3 vs the fp32 this stage dequantizes to
    for p in range(3):  # fp32 activations: see test_native_greedy_tokens_follow_dequantize
        ids = prompt(12, seed=p)
        want = greedy(deq, "d", ids, 32)
        got = greedy(native, "n", ids, 32, forced=want)
        assert sum(a == b for a, b in zip(got, want)) >= 30, (p, got, want)


@pytest.mark.parametrize("fp8", [True, False])
def test_grouped_expert_gemv_matches_reference(fp8):
    gu, gu_s = fp8_weights(2 * 7, 256, 384)  # 6 routed experts + the shared one, I 256, H 384
    dn, dn_s = fp8_weights(7, 384, 256)
    if not fp8:
        gu = torch.stack([dequantize_block_fp8(a, b) for a, b in zip(gu, gu_s)]).bfloat16()
        dn = torch.stack([dequantize_block_fp8(a, b) for a, b in zip(dn, dn_s)]).bfloat16()
        gu_s = dn_s = None
    x = torch.randn(3, 384, device="cuda", dtype=torch.bfloat16)
    ids = torch.tensor([[0, 3], [5, 0], [2, 4]], device="cuda")
    weights = torch.rand(3, 2, device="cuda")
    for t in (1, 3):
        args = (x[:t], weights[:t], ids[:t], gu, gu_s, dn, dn_s, 6)
        want = moe_gemv.reference_experts(*args)
        # FP8: the pairs-mode MMA kernel (two e4m3 activation terms) and the streaming GEMV
        for kernel in ("mma", "gemv") if fp8 else ("gemv",):
            assert rel(moe_gemv.experts(*args, fp8_kernel=kernel), want) < 1e-2, kernel


def test_router_choice_kernel_matches_router():
    spec = MoESpec(hidden_size=384, num_experts=64, top_k=8, expert_intermediate_size=128,
                   num_shared_experts=1, method="noaux_tc", num_groups=8, topk_groups=4,
                   norm_topk_prob=True, routed_scaling_factor=2.5)
    router = Router(spec).cuda()
    torch.nn.init.normal_(router.weight, std=0.05)
    router.e_score_correction_bias.normal_(std=0.1)
    router = router.bfloat16()
    x = torch.randn(3, 384, device="cuda", dtype=torch.bfloat16)
    assert router_select.usable(x, router)
    got_w, got_ids = router_select.route(x, router)
    with mock.patch.object(router_select, "usable", lambda x, r: False):
        want_w, want_ids = router(x)  # the torch ops
    a, b = got_ids.sort(1), want_ids.sort(1)
    assert torch.equal(a.values, b.values)
    torch.testing.assert_close(got_w.gather(1, a.indices), want_w.gather(1, b.indices))



@pytest.mark.parametrize("n,k", [(256, 7168), (64, 384), (256, 1000)])
def test_short_matrix_tile_matches_fp32_linear(n, k):
    # the router's tile (one row a program, whole row at once) against F.linear in fp32
    w = (torch.randn(n, k, device="cuda") / k**0.5).bfloat16()
    x = torch.randn(k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(n, dtype=torch.float32, device="cuda")
    gemv.launch(w, x, None, out, tile=gemv.tile_for(n, k))
    torch.testing.assert_close(out, w.float() @ x.float(), rtol=1e-4, atol=1e-4)


def test_router_tiles_and_pairs_configs_agree_old_and_new(monkeypatch):
    # the switches bench/fp8 flips for its old-vs-new rows give the same answers
    from engine import fp8_kernels
    spec = MoESpec(hidden_size=7168, num_experts=256, top_k=8, expert_intermediate_size=128,
                   num_shared_experts=1, method="noaux_tc", num_groups=8, topk_groups=4,
                   norm_topk_prob=True, routed_scaling_factor=2.5)
    router = Router(spec).cuda()
    torch.nn.init.normal_(router.weight, std=0.01)  # logits ~ N(0, 0.85): sigmoid scores far from ties
    router = router.bfloat16()
    x = torch.randn(1, 7168, device="cuda", dtype=torch.bfloat16)
    gu, gu_s = fp8_weights(2 * 3, 256, 384)
    dn, dn_s = fp8_weights(3, 384, 256)
    xe = torch.randn(1, 384, device="cuda", dtype=torch.bfloat16)
    args = (xe, torch.rand(1, 2, device="cuda"), torch.tensor([[0, 1]], device="cuda"),
            gu, gu_s, dn, dn_s, 2)
    got = {}
    for new in (False, True):
        monkeypatch.setattr(router_select, "SHORT_TILE", new)
        monkeypatch.setattr(fp8_kernels, "PAIRS_OWN_CONFIGS", new)
        got[new] = router_select.route(x, router), moe_gemv.experts(*args)
    (w0, i0), y0 = got[False]
    (w1, i1), y1 = got[True]
    assert torch.equal(i0, i1)
    torch.testing.assert_close(w0, w1, rtol=1e-5, atol=1e-6)
    assert rel(y1, moe_gemv.reference_experts(*args)) < 1e-2
    assert rel(y0, y1) < 1e-3
