"""The decode step's fused forms give what the unfused reference gives: packed q/k/v, gate/up
and q_a/kv_a products (every device), and on CUDA the one-kernel residual add + norm and
bias + rotary + KV-cache write (skipped without a GPU; run on the GPU host, notes in
bench/gpu/notes.md)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import fused, gemv
from engine.models.base import RMSNorm
from engine.packed_linear import pack_linears, packed
from engine.rope import apply_rope, apply_rope_interleaved
from engine.weights import load_weights

from test_decode_graphs import run  # the mixed prefill/decode schedule of the graph tests

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("arch,groups", [("qwen2", 8), ("deepseek_v3", 5)])
def test_packed_projections_give_the_unpacked_tokens(arch, groups, tiny_checkpoint, pipeline, prompt):
    ckpt = tiny_checkpoint(arch)
    want_logits, want = run(pipeline(ckpt, splits=(2,), cuda_graph_max_batch=8), prompt)
    packed_pipe = pipeline(ckpt, splits=(2,), cuda_graph_max_batch=8)
    # qwen2: q/k/v and gate/up in 4 layers; V3: q_a/kv_a in 4, gate/up in the first (dense) one
    assert sum(pack_linears(stage.model) for stage in packed_pipe.stages) == groups
    got_logits, got = run(packed_pipe, prompt)
    assert got == want
    for a, b in zip(got_logits, want_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_packed_weights_are_the_siblings_parameters(tiny_checkpoint, pipeline):
    """Names and loading stay as they were: the siblings' parameters are views of the packed
    weight, so a load fills it ([q | k | v] rows, biases likewise)."""
    ckpt = tiny_checkpoint("qwen2")
    stage = pipeline(ckpt).stages[0]
    names = sorted(stage.model.state_dict())
    pack_linears(stage.model)
    assert sorted(stage.model.state_dict()) == names
    attn = stage.model.model.layers["0"].self_attn
    qkv = packed(attn, "q_proj")
    with torch.no_grad():
        for p in stage.model.parameters():
            p.zero_()
    load_weights(stage.model, ckpt)
    torch.testing.assert_close(qkv.weight, torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                                      attn.v_proj.weight]), atol=0, rtol=0)
    assert qkv.weight.abs().sum() > 0 and qkv.bias.abs().sum() > 0
    assert qkv.sizes == [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]


def test_mlp_adds_the_residual_in_its_down_product(tiny_checkpoint, pipeline):
    mlp = pipeline(tiny_checkpoint("llama")).stages[0].model.model.layers["0"].mlp
    x = torch.randn(3, mlp.gate_proj.in_features)
    residual = torch.randn(3, mlp.down_proj.out_features)
    want = residual + mlp(x)
    with torch.inference_mode():
        got = mlp(x, residual=residual.clone())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_cuda
def test_add_rms_norm_kernel_equals_add_then_norm():
    norm = RMSNorm(3584, 1e-6).cuda().bfloat16()
    torch.nn.init.normal_(norm.weight)
    x, r = (torch.randn(5, 3584, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    h, y = norm.add_forward(x, r)
    torch.testing.assert_close(h, x + r, atol=0, rtol=0)
    xf = (x + r).float()
    want = norm.weight.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=2e-2)


@needs_cuda
@pytest.mark.parametrize("with_bias", [True, False])
def test_rope_qkv_kernel_equals_bias_rotary_and_cache_writes(with_bias):
    t, hq, hkv, d = 3, 8, 2, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16, generator=g)
    bias = torch.randn(qkv.shape[1], device="cuda", dtype=torch.bfloat16, generator=g) if with_bias else None
    freqs = torch.rand(t, d // 2, device="cuda", generator=g) * 6
    cos, sin = (torch.cat([f, f], -1).bfloat16() for f in (freqs.cos(), freqs.sin()))
    slots = torch.tensor([5, 0, 17], device="cuda")
    k_cache, v_cache = (torch.zeros(32, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    q = fused.rope_qkv_to_cache(qkv, bias, cos, sin, k_cache, v_cache, slots, hq)
    full = qkv if bias is None else qkv + bias
    wq, wk, wv = full.split([hq * d, hkv * d, hkv * d], -1)
    rope = lambda x: x.float() * cos.float()[:, None] + torch.cat(  # noqa: E731
        [-x[..., d // 2:], x[..., : d // 2]], -1).float() * sin.float()[:, None]
    torch.testing.assert_close(q.float(), rope(wq.view(t, hq, d)), atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(k_cache[slots].float(), rope(wk.view(t, hkv, d)), atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(v_cache[slots], wv.view(t, hkv, d), atol=0, rtol=0)
    assert k_cache.float().abs().sum() == k_cache[slots].float().abs().sum()  # no other slot
    torch.testing.assert_close(apply_rope(wq.view(t, hq, d), cos, sin).float(), q.float(),
                               atol=3e-2, rtol=2e-2)


@needs_cuda
def test_interleaved_rope_kernel_equals_the_torch_rotation():
    """DeepSeek's interleaved rotary on strided rope parts (q_pe of a packed query, k_pe of kv_a)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(3, 16, 192, device="cuda", dtype=torch.bfloat16, generator=g)[..., 128:]
    freqs = torch.rand(3, 32, device="cuda", generator=g) * 6
    cos, sin = (torch.cat([f, f], -1).bfloat16() for f in (freqs.cos(), freqs.sin()))
    half = 32
    c, s = cos[:, None, :half].float(), sin[:, None, :half].float()
    even, odd = q[..., 0::2].float(), q[..., 1::2].float()
    want = torch.cat((even * c - odd * s, odd * c + even * s), -1)
    torch.testing.assert_close(apply_rope_interleaved(q, cos, sin).float(), want, atol=3e-2, rtol=2e-2)


@needs_cuda
def test_silu_mul_kernel_reads_the_halves_of_a_packed_product():
    gate_up = torch.randn(4, 2 * 1000, device="cuda", dtype=torch.bfloat16)
    gate, up = gate_up.split(1000, -1)
    torch.testing.assert_close(fused.silu_mul(gate, up), F.silu(gate) * up, atol=2e-2, rtol=2e-2)


@needs_cuda
@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3"])
def test_fused_cuda_decode_steps_match_the_cpu_eager_steps(arch, tiny_checkpoint, pipeline, prompt):
    """fp32 on the GPU, packed and fused, decode steps from the block tables (graphs where they
    capture), against the CPU's unpacked eager steps."""
    ckpt = tiny_checkpoint(arch)
    want_logits, want = run(pipeline(ckpt, splits=(2,)), prompt)
    got_logits, got = run(pipeline(ckpt, splits=(2,), device="cuda:0", cuda_graph_max_batch=8), prompt)
    assert got == want
    for a, b in zip(got_logits, want_logits):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)


@needs_cuda
@pytest.mark.parametrize("n,k", [(4608, 3584), (37, 300), (5, 513)])
def test_gemv_equals_linear_with_bias_and_residual(n, k):
    """One-row products through the Triton GEMV (ragged tiles included), bias and residual in
    its epilogue."""
    g = torch.Generator(device="cuda").manual_seed(0)
    w, x, b, r = (torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g)
                  for s in ((n, k), (1, k), (n,), (1, n)))
    want = (r.float() + x.float() @ w.float().t() + b.float())
    got = gemv.linear(x, w, b, residual=r.clone())
    torch.testing.assert_close(got.float(), want, atol=0.1 + 1e-2 * want.abs().max().item(), rtol=2e-2)
    torch.testing.assert_close(gemv.linear(x, w).float(), F.linear(x, w).float(), atol=0.1, rtol=2e-2)
