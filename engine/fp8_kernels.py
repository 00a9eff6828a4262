"""The Triton kernels behind engine.fp8_gemm (imported only where triton is installed).

`_act_quant`: x [S, K] -> TERMS e4m3 terms [TERMS, S, K] + fp32 scales [TERMS, S, K/128], one
  program per (row, 128 channels); term 2 quantizes the residual of term 1.
`_gemm`: a BLOCK_M x BLOCK_N tile of one group's rows times its FP8 weight, 128 channels a step
  (prefill-sized row tiles): e4m3 terms x e4m3 weights on the FP8 tensor cores, or (TERMS = 0)
  activations in their dtype x the tile widened in registers (fp32: full fp32, "ieee").
`_gemv`: decode-sized row tiles (<= 64 rows of one group), swapped: out^T [BLOCK_N, BLOCK_M] =
  W tile [BLOCK_N, 128] x x^T [128, BLOCK_M], so the weight fills the MMA's 64-row side and a
  few rows of activations its narrow side (BLOCK_M = 16 at batch 1, not 16 rows of padding in a
  64-row wgmma). SPLIT programs share one tile's 128-channel steps when the tiles alone would
  leave SMs idle (o_proj, kv_a, q_a at batch 1); `_split_sum` adds their fp32 partials.
  Pairs mode (PAIR_KP > 0, engine/moe_gemv.py): tile p is one (token, expert choice) pair,
  its expert read from the router's ids on the device (no sorting, no block table).
Tile widths, warps and pipeline depth are autotuned per shape on first use (a CUDA-graph
capture must come after a warm-up call, as every capture does); BLOCK_M and SPLIT come from
host-side shapes only, so the grid never depends on device values. Compiling is the cost of
first use (~8 s per new shape on the H200 with 3-5 configs: bench/fp8/notes.md), so the row
count S is not specialized on (one compile serves every batch size) and the config lists are short.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.fp8_gemm import QUANT_BLOCK, block_table, max_tiles, rows_per_group

BUSY_PROGRAMS = 264  # ~2 programs per SM on an H200 (132 SMs): below it, split K
MIN_SPLIT_STEPS = 4  # 128-channel steps each split keeps at least (pipeline depth)


def _configs(shapes):
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=st) for bn, w, st in shapes]


LARGE_M = _configs([(64, 4, 3), (128, 4, 3), (128, 8, 3), (128, 8, 4)])
WIDE_SMALL_M = _configs([(64, 4, 4), (128, 4, 4)])
GEMV = _configs([(64, 4, 4), (128, 4, 4), (64, 4, 6)])
# Pairs mode (experts at <= 4 tokens) also tries shallower pipelines: with 4 stages a 64-row
# program holds ~48 KB of shared memory, so 4 fit an SM (528 slots on 132 SMs) and V3's gate/up
# at batch 1 (9 pairs x 64 column tiles = 576 programs) runs as 1.09 waves, its last 48 programs
# alone; 2-3 stages (24-36 KB) fit 6-9 an SM and the whole grid in one wave.
PAIRS = GEMV + _configs([(64, 4, 3), (64, 4, 2), (128, 4, 2)])
PAIRS_OWN_CONFIGS = True  # False: pairs mode autotunes over GEMV alone (bench/fp8 compares)


def block_m(rows: float) -> int:
    for bm in (16, 32, 64):
        if rows <= bm:
            return bm
    return 128


def act_quant(x: torch.Tensor, terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [S, K] -> (e4m3 [terms, S, K], fp32 scales [terms, S, ceil(K/128)])."""
    s, k = x.shape
    kb = triton.cdiv(k, QUANT_BLOCK)
    q = torch.empty(terms, s, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(terms, s, kb, dtype=torch.float32, device=x.device)
    _act_quant[(s, kb)](x, q, scale, s, k, x.stride(0), kb, TERMS=terms, BLOCK=QUANT_BLOCK)
    return q, scale


def split_k(active_tiles: int, n: int, kb: int) -> int:
    """Programs per tile along K: double while the grid is short of BUSY_PROGRAMS (splits of
    equal length, each at least MIN_SPLIT_STEPS)."""
    split = 1
    while (active_tiles * triton.cdiv(n, 64) * split < BUSY_PROGRAMS
           and kb % (2 * split) == 0 and kb // (2 * split) >= MIN_SPLIT_STEPS):
        split *= 2
    return split


def fp8_gemm(x, weight, scale_inv, counts, parts: int, terms: int) -> torch.Tensor:
    """See engine.fp8_gemm.fp8_matmul; terms 0 = activations not quantized ("wide")."""
    assert weight.dtype == torch.float8_e4m3fn and scale_inv.dtype == torch.float32
    x = x.contiguous()
    s, k = x.shape
    p, r, kw = weight.shape
    assert kw == k, f"weight has {kw} input channels, x has {k}"
    n = parts * r
    out = x.new_empty(s, n)
    if s == 0:
        return out
    groups = p // parts
    bm = block_m(rows_per_group(s, counts, groups))
    if counts is None:
        num_m, active = triton.cdiv(s, bm), triton.cdiv(s, bm)
        table = torch.empty(3, 1, dtype=torch.int32, device=x.device)  # unused when DENSE
    else:
        num_m, active = max_tiles(s, groups, bm), min(groups, s)
        table = block_table(counts, bm, num_m)
    a, a_scale = act_quant(x, terms) if terms else (x[None], x)  # a_scale unused without terms
    kb = scale_inv.shape[2]
    args = (a, a_scale, weight, scale_inv)
    shape = dict(PARTS=parts, DENSE=counts is None, TERMS=terms, BLOCK_M=bm, BLOCK_K=QUANT_BLOCK)
    if terms and bm <= 64:
        return small_m(args, out, table, (s, n, k, r, scale_inv.shape[1], kb), active,
                        (table.stride(0), 0, 0, s), dict(shape, PAIR_KP=0, IN_DIV=1))
    kernel = _gemm_large if bm > 32 or terms else _gemm_wide_small
    grid = lambda meta: (num_m, triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    kernel[grid](*args, out, table, s, n, k, r, scale_inv.shape[1], kb, table.stride(0), **shape)
    return out


def small_m(args, out, table, dims, active: int, extra, shape) -> torch.Tensor:
    """The swapped small-M kernel over dims (S, N, K, R, RB, KB); split K when short of
    programs; extra = (table stride, choices per token, shared slot, activation rows)."""
    s, n, k, r, rb, kb = dims
    split = split_k(active, n, kb)
    dst = out if split == 1 else torch.empty(split, s, n, dtype=torch.float32, device=out.device)
    num_m = active if shape["PAIR_KP"] else triton.cdiv(s, shape["BLOCK_M"]) if shape["DENSE"] \
        else table.shape[1]
    grid = lambda meta: (num_m, triton.cdiv(n, meta["BLOCK_N"]), split)  # noqa: E731
    kernel = _gemv_pairs if shape["PAIR_KP"] and PAIRS_OWN_CONFIGS else _gemv
    kernel[grid](*args, dst, table, s, n, k, r, rb, kb, kb // split, n * s, *extra, SPLIT=split,
                **shape)
    if split > 1:
        _split_sum[(s, triton.cdiv(n, 1024))](dst, out, split, s * n, n, BLOCK=1024)
    return out


@triton.jit(do_not_specialize=["S"])
def _act_quant(x_ptr, q_ptr, s_ptr, S, K, stride_x, KB, TERMS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    kb = tl.program_id(1)
    cols = kb * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
    for t in tl.static_range(TERMS):
        scale = tl.maximum(tl.max(tl.abs(x)), 1e-12) / 448.0
        q = (x / scale).to(q_ptr.dtype.element_ty)
        tl.store(q_ptr + (t * S + row) * K + cols, q, mask=cols < K)
        tl.store(s_ptr + (t * S + row) * KB + kb, scale)
        x = x - q.to(tl.float32) * scale  # what the next term quantizes


@triton.jit
def _tile_rows(table_ptr, stride_t, S, CHOICES, SHARED, BLOCK_M: tl.constexpr,
               DENSE: tl.constexpr, PAIR_KP: tl.constexpr):
    """(group, rows [BLOCK_M], row mask) of this program's row tile; group -1: nothing to do.
    PAIR_KP > 0: tile p is (token, choice) pair p alone, its group the expert id that
    table_ptr [T, CHOICES] holds (choice CHOICES: the shared slot SHARED)."""
    pid_m = tl.program_id(0)
    if PAIR_KP > 0:
        choice = pid_m % PAIR_KP
        routed = choice < CHOICES
        expert = tl.load(table_ptr + (pid_m // PAIR_KP) * CHOICES + choice, mask=routed, other=0)
        group = tl.where(routed, expert, SHARED).to(tl.int32)
        row0 = pid_m
        row_end = pid_m + 1
    elif DENSE:
        group = 0
        row0 = pid_m * BLOCK_M
        row_end = S
    else:
        group = tl.load(table_ptr + pid_m)
        row0 = tl.load(table_ptr + stride_t + pid_m)
        row_end = tl.load(table_ptr + 2 * stride_t + pid_m)
    rm = row0 + tl.arange(0, BLOCK_M)
    return group, rm, rm < row_end


@triton.jit
def _weight_rows(group, N, R, RB, KB, PARTS: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """Output columns of this program: their weight rows and their scale rows' offsets."""
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    part = group * PARTS + rn // R  # [BLOCK_N] weight part of each output column
    w_row = (part * R + rn % R).to(tl.int64)
    s_row = (part * RB + (rn % R) // BLOCK_K) * KB
    return rn, rn < N, w_row, s_row


@triton.jit(do_not_specialize=["S", "S_IN"])
def _gemv_body(
    a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, table_ptr, S, N, K, R, RB, KB, KB_PER, stride_split,
    stride_t, CHOICES, SHARED, S_IN, SPLIT: tl.constexpr, PARTS: tl.constexpr,
    DENSE: tl.constexpr, TERMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PAIR_KP: tl.constexpr, IN_DIV: tl.constexpr,
):
    group, rm, m_mask = _tile_rows(table_ptr, stride_t, S, CHOICES, SHARED, BLOCK_M, DENSE, PAIR_KP)
    if group >= 0:
        rn, n_mask, w_row, s_row = _weight_rows(group, N, R, RB, KB, PARTS, BLOCK_N, BLOCK_K)
        rx = rm // IN_DIV  # activation rows: the pair's token when pairs share their token's row
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for step in range(0, KB_PER):
            kb = tl.program_id(2) * KB_PER + step
            rk = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            k_mask = rk < K
            w = tl.load(b_ptr + w_row[:, None] * K + rk[None, :],
                        mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_K]
            w_s = tl.load(bs_ptr + s_row + kb, mask=n_mask, other=0.0)
            for t in tl.static_range(TERMS):
                x_t = tl.load(a_ptr + (t * S_IN + rx[None, :]) * K + rk[:, None],
                              mask=m_mask[None, :] & k_mask[:, None], other=0.0)  # [BLOCK_K, BLOCK_M]
                x_s = tl.load(as_ptr + (t * S_IN + rx) * KB + kb, mask=m_mask, other=0.0)
                acc += tl.dot(w, x_t) * (w_s[:, None] * x_s[None, :])
        c = c_ptr + tl.program_id(2) * stride_split + rm[None, :].to(tl.int64) * N + rn[:, None]
        tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_mask[None, :] & n_mask[:, None])


@triton.jit(do_not_specialize=["S"])
def _gemm_body(
    a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, table_ptr, S, N, K, R, RB, KB, stride_t,
    PARTS: tl.constexpr, DENSE: tl.constexpr, TERMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    group, rm, m_mask = _tile_rows(table_ptr, stride_t, S, 0, 0, BLOCK_M, DENSE, 0)
    if group >= 0:
        rn, n_mask, w_row, s_row = _weight_rows(group, N, R, RB, KB, PARTS, BLOCK_N, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, KB):
            rk = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            k_mask = rk < K
            b = tl.load(b_ptr + w_row[None, :] * K + rk[:, None],
                        mask=n_mask[None, :] & k_mask[:, None], other=0.0)  # [BLOCK_K, BLOCK_N]
            b_s = tl.load(bs_ptr + s_row + kb, mask=n_mask, other=0.0)
            if TERMS == 0:
                a = tl.load(a_ptr + rm[:, None] * K + rk[None, :],
                            mask=m_mask[:, None] & k_mask[None, :], other=0.0)
                if a.dtype == tl.float32:
                    acc += tl.dot(a, b.to(tl.float32), input_precision="ieee") * b_s[None, :]
                else:
                    acc += tl.dot(a, b.to(a.dtype)) * b_s[None, :]
            else:
                for t in tl.static_range(TERMS):
                    a = tl.load(a_ptr + (t * S + rm[:, None]) * K + rk[None, :],
                                mask=m_mask[:, None] & k_mask[None, :], other=0.0)
                    a_s = tl.load(as_ptr + (t * S + rm) * KB + kb, mask=m_mask, other=0.0)
                    acc += tl.dot(a, b) * (a_s[:, None] * b_s[None, :])
        c = c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
        tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _split_sum(P, OUT, SPLIT, STRIDE, N, BLOCK: tl.constexpr):
    """OUT [S, N] = the sum of the split-K partials P [SPLIT, S, N] (fp32), one rounding."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    acc = tl.zeros([BLOCK], tl.float32)
    for j in range(0, SPLIT):
        acc += tl.load(P + j * STRIDE + row * N + cols, mask=mask, other=0.0)
    tl.store(OUT + row * N + cols, acc.to(OUT.dtype.element_ty), mask=mask)


def _quick_bench(fn, quantiles):
    """Autotuning timer: 5 ms warm-up, 20 ms of repeats (the default 25 + 100 ms per config
    would add minutes to a stage's first steps)."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


_KEY = ["N", "K", "BLOCK_M", "TERMS", "PARTS"]
_gemm_large = triton.autotune(configs=LARGE_M, key=_KEY, do_bench=_quick_bench)(_gemm_body)
_gemm_wide_small = triton.autotune(configs=WIDE_SMALL_M, key=_KEY, do_bench=_quick_bench)(_gemm_body)
_gemv = triton.autotune(configs=GEMV, key=_KEY + ["SPLIT", "PAIR_KP", "IN_DIV"],
                        do_bench=_quick_bench)(_gemv_body)
_gemv_pairs = triton.autotune(configs=PAIRS, key=_KEY + ["SPLIT", "PAIR_KP", "IN_DIV"],
                              do_bench=_quick_bench)(_gemv_body)
