"""Routed experts for a few tokens as two launches: every (token, chosen expert) pair's gate/up
GEMV with SiLU * up in its epilogue, then one down GEMV per token that sums its experts' rows
times the routing weights (the combine) — FP8 block-scaled or bf16 expert stacks alike.

At batch 1 the grouped-GEMM path (engine/models/moe.py) spends ~20 small kernels on sorting
rows by expert, block tables and the combine, and its MMA tiles read the 8 + 1 experts' weights
at well under the copy rate. Here the expert ids are read on the device (no host sync, so a
CUDA graph captures it), each program streams its weight rows once (engine/wo_gemv.row_dot),
and nothing else is launched. Pairs of different tokens re-read an expert they share, so this
path is for few tokens only (MAX_TOKENS, measured in bench/fp8/notes.md).

Stacks as `Experts` holds them: gate_up [2S, I, H] (rows 2e, 2e + 1: slot e's gate and up),
down [S, H, I], FP8 with block scales [2S, I/128, H/128] and [S, H/128, I/128], or bf16 without.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.fp8_gemm import QUANT_BLOCK
from engine.wo_gemv import triton

if triton is not None:
    import triton.language as tl

    from engine.wo_gemv import row_dot

MAX_TOKENS = 4  # above it the grouped GEMMs win (shared experts are read once there)
# (BLOCK_N rows, KSUB 128-channel blocks per step, warps): ~4 KB of weights per step
TILES = {torch.float8_e4m3fn: (4, 8, 4), torch.bfloat16: (4, 4, 4), torch.float16: (4, 4, 4),
         torch.float32: (4, 2, 4)}


def fits(tokens: int, x_dtype: torch.dtype, expert_dtype: torch.dtype) -> bool:
    """Whether `tokens` tokens of x_dtype through experts of expert_dtype take this path."""
    return (0 < tokens <= MAX_TOKENS and x_dtype in (torch.bfloat16, torch.float16)
            and expert_dtype in (torch.float8_e4m3fn, x_dtype))


def usable(x: torch.Tensor, gate_up: torch.Tensor) -> bool:
    """`fits`, on CUDA with triton, x [T, H]."""
    return triton is not None and x.is_cuda and x.dim() == 2 and fits(x.shape[0], x.dtype, gate_up.dtype)


def experts(x, weights, ids, gate_up, gate_up_scale, down, down_scale,
            shared_slot: int | None) -> torch.Tensor:
    """x [T, H], weights [T, K] fp32, ids [T, K] -> sum_k weights * expert_ids(x) (+ the shared
    expert in slot `shared_slot` with weight 1) [T, H] in x's dtype."""
    x, ids, weights = x.contiguous(), ids.contiguous(), weights.contiguous()
    t, h = x.shape
    k = ids.shape[1]
    kp = k + (shared_slot is not None)
    inter = down.shape[2]
    bn, ksub, warps = TILES[gate_up.dtype]
    scaled = gate_up_scale is not None
    kb_h, kb_i = triton.cdiv(h, QUANT_BLOCK), triton.cdiv(inter, QUANT_BLOCK)
    act = x.new_empty(t * kp, inter)  # silu(gate) * up of each (token, slot) pair
    _gate_up_kernel[(t * kp, triton.cdiv(inter, bn))](
        gate_up, gate_up_scale if scaled else gate_up, x, ids, act, k, kp, inter, h, kb_h,
        -1 if shared_slot is None else shared_slot, SCALED=scaled, BLOCK_N=bn, KSUB=ksub,
        num_warps=warps)
    out = x.new_empty(t, h)
    _down_kernel[(t, triton.cdiv(h, bn))](
        down, down_scale if scaled else down, act, ids, weights, out, k, kp, h, inter, kb_i,
        -1 if shared_slot is None else shared_slot, SCALED=scaled, BLOCK_N=bn, KSUB=ksub,
        num_warps=warps)
    return out


def _dequantized(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return w.float()
    s = scale.repeat_interleave(QUANT_BLOCK, -2).repeat_interleave(QUANT_BLOCK, -1)
    return w.float() * s[..., : w.shape[-2], : w.shape[-1]]


def reference_experts(x, weights, ids, gate_up, gate_up_scale, down, down_scale,
                      shared_slot: int | None) -> torch.Tensor:
    """The kernels' arithmetic in torch, one pair at a time (tests, CPU): fp32 products, gate and
    up rounded to x's dtype before SiLU, each expert's output rounded, weights in x's dtype."""
    t, k = ids.shape
    out = torch.zeros(t, x.shape[1], device=x.device)
    for i in range(t):
        slots = ids[i].tolist() + ([] if shared_slot is None else [shared_slot])
        wts = weights[i].tolist() + ([] if shared_slot is None else [1.0])
        for e, wt in zip(slots, wts):
            gate, up = (x[i].float() @ _dequantized(gate_up[2 * e + j], None if gate_up_scale
                        is None else gate_up_scale[2 * e + j]).T for j in (0, 1))
            act = (F.silu(gate.to(x.dtype)) * up.to(x.dtype)).to(x.dtype)
            y = act.float() @ _dequantized(down[e], None if down_scale is None else down_scale[e]).T
            out[i] += torch.tensor(wt).to(x.dtype).float() * y.to(x.dtype).float()
    return out.to(x.dtype)


if triton is not None:

    @triton.jit
    def _slot_expert(IDS, WTS, t, slot, K, SHARED):
        """(expert slot, routing weight) of a token's choice `slot`; slot K: the shared expert."""
        routed = slot < K
        e = tl.load(IDS + t * K + slot, mask=routed, other=0)
        wt = tl.load(WTS + t * K + slot, mask=routed, other=1.0)
        return tl.where(routed, e, SHARED).to(tl.int64), tl.where(routed, wt, 1.0)

    @triton.jit
    def _gate_up_kernel(GU, GUS, X, IDS, ACT, K, KP, I, H, KB, SHARED, SCALED: tl.constexpr,
                        BLOCK_N: tl.constexpr, KSUB: tl.constexpr):
        pair = tl.program_id(0)
        t = pair // KP
        e, _ = _slot_expert(IDS, IDS, t, pair % KP, K, SHARED)  # weights unused here
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < I
        xs = tl.zeros([1], tl.int64) + t * H
        xmask = tl.full([1], True, tl.int1)
        rb = tl.cdiv(I, 128)
        gate = row_dot(GU, GUS, X, 2 * e * I + n, 2 * e * rb + n // 128, nmask, xs, xmask,
                       H, KB, SCALED, KSUB)
        up = row_dot(GU, GUS, X, (2 * e + 1) * I + n, (2 * e + 1) * rb + n // 128, nmask,
                     xs, xmask, H, KB, SCALED, KSUB)  # [1, BLOCK_N]
        dt = ACT.dtype.element_ty
        gate = gate.to(dt).to(tl.float32)  # the products' own rounding, as the GEMM path has it
        silu = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
        act = silu * up.to(dt).to(tl.float32)
        tl.store(ACT + pair.to(tl.int64) * I + n[None, :], act.to(dt), mask=nmask[None, :])

    @triton.jit
    def _down_kernel(D, DS, ACT, IDS, WTS, OUT, K, KP, H, I, KB, SHARED, SCALED: tl.constexpr,
                     BLOCK_N: tl.constexpr, KSUB: tl.constexpr):
        t = tl.program_id(0)
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < H
        xmask = tl.full([1], True, tl.int1)
        rb = tl.cdiv(H, 128)
        dt = OUT.dtype.element_ty
        total = tl.zeros([1, BLOCK_N], tl.float32)
        for slot in range(0, KP):
            e, wt = _slot_expert(IDS, WTS, t, slot, K, SHARED)
            xs = tl.zeros([1], tl.int64) + (t * KP + slot).to(tl.int64) * I
            y = row_dot(D, DS, ACT, e * H + n, e * rb + n // 128, nmask, xs, xmask, I, KB,
                        SCALED, KSUB)  # [1, BLOCK_N]
            total += wt.to(dt).to(tl.float32) * y.to(dt).to(tl.float32)
        tl.store(OUT + t.to(tl.int64) * H + n[None, :], total.to(dt), mask=nmask[None, :])
