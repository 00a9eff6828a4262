"""The few-token expert paths (engine/moe_gemv.py, router_select.py): which batches take them,
and their arithmetic through the torch reference the GPU tests hold the kernels to
(tests/engine/test_fp8_native_cuda.py). On the CPU the kernels never run; a test stands the
reference in for them to check that the model hands them the right tensors.
"""
from __future__ import annotations

import pytest
import torch

from engine import moe_gemv
from engine.fp8 import dequantize_block_fp8, quantize_block_fp8
from engine.models.moe import Experts, MoESpec

SPEC = MoESpec(hidden_size=256, num_experts=6, top_k=2, expert_intermediate_size=160,
               num_shared_experts=1, method="noaux_tc", num_groups=2, topk_groups=1)


def fp8_stack(parts: int, n: int, k: int, gen: torch.Generator):
    pairs = [quantize_block_fp8(torch.randn(n, k, generator=gen) / k**0.5) for _ in range(parts)]
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])


def test_few_tokens_take_the_pairs_path_and_more_sort_by_expert():
    fp8, bf16 = torch.float8_e4m3fn, torch.bfloat16
    assert [moe_gemv.fits(t, bf16, fp8) for t in (0, 1, 4, 5, 64)] == [False, True, True, False, False]
    assert moe_gemv.fits(1, bf16, bf16) and moe_gemv.fits(2, torch.float16, torch.float16)
    # fp32 activations multiply exactly in the MMA kernel's "wide" mode: they keep the sorted path
    assert not moe_gemv.fits(1, torch.float32, fp8) and not moe_gemv.fits(1, bf16, torch.float16)
    x = torch.randn(1, 256).bfloat16()  # CPU tensors never take the Triton paths
    assert not moe_gemv.usable(x, torch.empty(8, 16, 256, dtype=fp8))


@pytest.mark.parametrize("fp8", [True, False])
def test_grouped_gemv_reference_equals_the_grouped_gemm_path(fp8):
    """Same routed sum as Experts.forward's sorted grouped GEMMs, shared expert included."""
    gen = torch.Generator().manual_seed(1)
    experts = Experts(SPEC)
    slots, i, h = experts.num_slots, SPEC.expert_intermediate_size, SPEC.hidden_size
    gu, gu_s = fp8_stack(2 * slots, i, h, gen)
    dn, dn_s = fp8_stack(slots, h, i, gen)
    if fp8:
        experts.use_fp8()
        experts.gate_up_proj_scale_inv.data, experts.down_proj_scale_inv.data = gu_s, dn_s
        experts.gate_up_proj.data, experts.down_proj.data = gu, dn
        stacks = (gu, gu_s, dn, dn_s)
    else:  # bf16 experts: the dequantized values
        stacks = (torch.stack([dequantize_block_fp8(a, b) for a, b in zip(gu, gu_s)]), None,
                  torch.stack([dequantize_block_fp8(a, b) for a, b in zip(dn, dn_s)]), None)
        experts.gate_up_proj.data, experts.down_proj.data = stacks[0], stacks[2]
    x = torch.randn(3, h, generator=gen)  # fp32: the grouped path multiplies exactly
    ids = torch.tensor([[0, 3], [5, 0], [2, 4]])
    weights = torch.rand(3, 2, generator=gen)
    want = experts(x, weights, ids)
    got = moe_gemv.reference_experts(x, weights, ids, *stacks[:2], *stacks[2:], SPEC.num_experts)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_batch1_experts_hand_the_kernels_their_tensors(monkeypatch):
    """With the kernels standing in as their reference, a batch-1 FP8 expert sum gives what the
    sorted path gives: the right stacks, scales, shared slot and routing weights."""
    gen = torch.Generator().manual_seed(2)
    experts = Experts(SPEC)
    experts.use_fp8()
    slots, i, h = experts.num_slots, SPEC.expert_intermediate_size, SPEC.hidden_size
    experts.gate_up_proj.data, experts.gate_up_proj_scale_inv.data = fp8_stack(2 * slots, i, h, gen)
    experts.down_proj.data, experts.down_proj_scale_inv.data = fp8_stack(slots, h, i, gen)
    ids, weights = torch.tensor([[4, 1]]), torch.tensor([[0.7, 0.2]])
    x = torch.randn(1, h, generator=gen)
    want = experts(x, weights, ids)
    calls = []
    monkeypatch.setattr(moe_gemv, "usable", lambda x, w: True)
    monkeypatch.setattr(moe_gemv, "experts", lambda *a: calls.append(a) or moe_gemv.reference_experts(*a))
    got = experts(x, weights, ids)
    assert len(calls) == 1 and calls[0][-1] == SPEC.num_experts  # the shared expert's slot
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
