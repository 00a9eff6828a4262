"""Routed experts for a few tokens without sorting: each (token, chosen expert) pair is its own
product, its expert id read on the device (no host sync, so a CUDA graph captures it).

At batch 1 the sorted grouped-GEMM path (engine/models/moe.py) spends ~50 small kernels on
sorting rows by expert, block tables, gathers and the combine: more device time than the
weight reads themselves (bench/fp8/notes.md, version 5 profile). Here:
  FP8 experts   the swapped small-M MMA kernel in pairs mode (engine/fp8_kernels.py): gate/up
                per pair, SiLU * up, down per pair, then the routing-weighted sum (one bmm);
  bf16 experts  a GEMV that streams the weights (engine/gemv.py's tile): gate/up per pair with
                SiLU * up in its epilogue, then one down GEMV per token that sums its experts'
                rows times the routing weights.
Pairs of different tokens re-read an expert they share, so this is for few tokens (MAX_TOKENS):
at 4 tokens the extra reads (the shared expert 3 more times, ~130 MB on V3) cost less than the
sorting path's small kernels.

Stacks as `Experts` holds them: gate_up [2S, I, H] (rows 2e, 2e + 1: slot e's gate and up),
down [S, H, I], FP8 with block scales [2S, I/128, H/128] and [S, H/128, I/128], or bf16 without.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.fp8_gemm import QUANT_BLOCK

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

MAX_TOKENS = 4
BLOCK_N, BLOCK_K, WARPS = 4, 512, 4  # engine/gemv.py's tile (bf16: 4 KB of weights a step)


def fits(tokens: int, x_dtype: torch.dtype, expert_dtype: torch.dtype) -> bool:
    """Whether `tokens` tokens of x_dtype through experts of expert_dtype take this path."""
    return (0 < tokens <= MAX_TOKENS and x_dtype in (torch.bfloat16, torch.float16)
            and expert_dtype in (torch.float8_e4m3fn, x_dtype))


def usable(x: torch.Tensor, gate_up: torch.Tensor) -> bool:
    """`fits`, on CUDA with triton, x [T, H]."""
    return triton is not None and x.is_cuda and x.dim() == 2 and fits(x.shape[0], x.dtype, gate_up.dtype)


def experts(x, weights, ids, gate_up, gate_up_scale, down, down_scale, shared_slot: int | None,
            fp8_kernel: str = "mma") -> torch.Tensor:
    """x [T, H], weights [T, K] fp32, ids [T, K] -> sum_k weights * expert_ids(x) (+ the shared
    expert in slot `shared_slot` with weight 1) [T, H] in x's dtype. fp8_kernel "gemv" runs FP8
    stacks through the streaming GEMV too (bench/fp8/probe_small_m.py compares the two)."""
    x, ids, weights = x.contiguous(), ids.contiguous(), weights.contiguous()
    if gate_up_scale is not None and fp8_kernel == "mma":
        return _fp8_pairs(x, weights, ids, gate_up, gate_up_scale, down, down_scale, shared_slot)
    t, h = x.shape
    k = ids.shape[1]
    kp = k + (shared_slot is not None)
    inter = down.shape[2]
    scaled = gate_up_scale is not None
    shared = -1 if shared_slot is None else shared_slot
    act = x.new_empty(t * kp, inter)  # silu(gate) * up of each (token, choice) pair
    _gate_up_kernel[(t * kp, triton.cdiv(inter, BLOCK_N))](
        gate_up, gate_up_scale if scaled else gate_up, x, ids, act, k, kp, inter, h,
        triton.cdiv(h, QUANT_BLOCK), shared, SCALED=scaled, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        num_warps=WARPS)
    out = x.new_empty(t, h)
    _down_kernel[(t, triton.cdiv(h, BLOCK_N))](
        down, down_scale if scaled else down, act, ids, weights, out, k, kp, h, inter,
        triton.cdiv(inter, QUANT_BLOCK), shared, SCALED=scaled, BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K, num_warps=WARPS)
    return out


def _fp8_pairs(x, weights, ids, gate_up, gate_up_scale, down, down_scale, shared_slot):
    from engine import fused

    t, k = ids.shape
    inter = down.shape[2]
    gu = fp8_gemm_pairs(x, gate_up, gate_up_scale, ids, shared_slot, parts=2, per_token=True)
    act = fused.silu_mul(gu[:, :inter], gu[:, inter:])  # [T * KP, I]
    y = fp8_gemm_pairs(act, down, down_scale, ids, shared_slot, parts=1, per_token=False)
    if shared_slot is not None:  # the shared expert: one more choice of weight 1
        weights = F.pad(weights, (0, 1), value=1.0)
    return torch.bmm(weights.to(x.dtype)[:, None, :], y.view(t, weights.shape[1], -1))[:, 0]


def fp8_gemm_pairs(x, weight, scale_inv, ids, shared: int | None, parts: int, per_token: bool,
                   terms: int = 2) -> torch.Tensor:
    """Each (token, choice) pair of ids [T, C] (+ the shared slot `shared` as choice C) times its
    expert's weights: -> [T * KP, parts * R], row p for token p // KP, choice p % KP. x is [T, K]
    (per_token: every pair of a token reads its row) or [T * KP, K] (one row per pair). One
    16-row tile per pair, its group read from ids on the device: no sorting, no block table."""
    from engine.fp8_kernels import act_quant, small_m  # imports triton: GPU hosts only

    x = x.contiguous()
    t, c = ids.shape
    kp = c + (shared is not None)
    pairs = t * kp
    _, r, k = weight.shape
    n = parts * r
    out = x.new_empty(pairs, n)
    a, a_scale = act_quant(x, terms)
    kb = scale_inv.shape[2]
    shape = dict(PARTS=parts, DENSE=False, TERMS=terms, BLOCK_M=16, BLOCK_K=QUANT_BLOCK,
                 PAIR_KP=kp, IN_DIV=kp if per_token else 1)
    return small_m((a, a_scale, weight, scale_inv), out, ids.contiguous(),
                    (pairs, n, k, r, scale_inv.shape[1], kb), pairs,
                    (c, c, -1 if shared is None else shared, x.shape[0]), shape)


def _dequantized(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return w.float()
    s = scale.repeat_interleave(QUANT_BLOCK, -2).repeat_interleave(QUANT_BLOCK, -1)
    return w.float() * s[..., : w.shape[-2], : w.shape[-1]]


def reference_experts(x, weights, ids, gate_up, gate_up_scale, down, down_scale,
                      shared_slot: int | None) -> torch.Tensor:
    """The arithmetic in torch, one pair at a time (tests, CPU): fp32 products, gate and up
    rounded to x's dtype before SiLU, each expert's output rounded, weights in x's dtype."""
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
    def _row_dot(W, S, X, rows, rmask, s_row0, x_off, K, KB, SCALED: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """sum_k W[rows, k] * X[x_off + k] -> [BLOCK_N] fp32 (rows [BLOCK_N] int64, one 128-row
        scale block: its scales S[s_row0, k // 128] multiply the activations, not the weights)."""
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            cmask = cols < K
            w = tl.load(W + rows[:, None] * K + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                        other=0.0)
            x = tl.load(X + x_off + cols, mask=cmask, other=0.0).to(tl.float32)
            if SCALED:
                x = x * tl.load(S + s_row0 * KB + cols // 128, mask=cmask, other=0.0)
            acc += w.to(tl.float32) * x[None, :]
        return tl.sum(acc, axis=1)

    @triton.jit
    def _choice(IDS, WTS, t, c, K, SHARED):
        """(expert slot, routing weight) of a token's choice c; choice K: the shared expert."""
        routed = c < K
        e = tl.load(IDS + t * K + c, mask=routed, other=0)
        wt = tl.load(WTS + t * K + c, mask=routed, other=1.0)
        return tl.where(routed, e, SHARED).to(tl.int64), tl.where(routed, wt, 1.0)

    @triton.jit
    def _gate_up_kernel(GU, GUS, X, IDS, ACT, K, KP, I, H, KB, SHARED, SCALED: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pair = tl.program_id(0)
        t = pair // KP
        e, _ = _choice(IDS, IDS, t, pair % KP, K, SHARED)  # (the weight is unused here)
        n0 = tl.program_id(1) * BLOCK_N
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < I
        rb = tl.cdiv(I, 128)
        x_off = t.to(tl.int64) * H
        gate = _row_dot(GU, GUS, X, 2 * e * I + n, nmask, 2 * e * rb + n0 // 128, x_off, H, KB,
                        SCALED, BLOCK_N, BLOCK_K)
        up = _row_dot(GU, GUS, X, (2 * e + 1) * I + n, nmask, (2 * e + 1) * rb + n0 // 128,
                      x_off, H, KB, SCALED, BLOCK_N, BLOCK_K)
        dt = ACT.dtype.element_ty
        gate = gate.to(dt).to(tl.float32)  # the products' own rounding, as the GEMM path has it
        silu = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
        tl.store(ACT + pair.to(tl.int64) * I + n, (silu * up.to(dt).to(tl.float32)).to(dt),
                 mask=nmask)

    @triton.jit
    def _down_kernel(D, DS, ACT, IDS, WTS, OUT, K, KP, H, I, KB, SHARED, SCALED: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        t = tl.program_id(0)
        n0 = tl.program_id(1) * BLOCK_N
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < H
        rb = tl.cdiv(H, 128)
        dt = OUT.dtype.element_ty
        total = tl.zeros([BLOCK_N], tl.float32)
        for c in range(0, KP):  # the token's experts, summed with their routing weights
            e, wt = _choice(IDS, WTS, t, c, K, SHARED)
            x_off = (t * KP + c).to(tl.int64) * I
            y = _row_dot(D, DS, ACT, e * H + n, nmask, e * rb + n0 // 128, x_off, I, KB, SCALED,
                         BLOCK_N, BLOCK_K)
            total += wt.to(dt).to(tl.float32) * y.to(dt).to(tl.float32)
        tl.store(OUT + t.to(tl.int64) * H + n, total.to(dt), mask=nmask)
