"""The Triton kernels behind engine.fp8_gemm (imported only where triton is installed).

`_act_quant`: x [S, K] -> e4m3 [S, K] + fp32 scales [S, K/128], one program per (row, block).
`_gemm`: a BLOCK_M x BLOCK_N tile of one group's rows times its FP8 weight, 128 channels a step:
  A_FP8   e4m3 activations x e4m3 weights on the FP8 tensor cores, both scales per step;
  else    activations in their dtype x the weight tile widened in registers (bf16/fp16; fp32
          stages multiply in full fp32, "ieee", so tests compare exactly).
Tile widths, warps and pipeline depth are autotuned per (N, K, BLOCK_M, A_FP8) on first use
(a CUDA-graph capture must come after a warm-up call, as every capture does); BLOCK_M is chosen
from the host-side row count so that the grid never depends on device values.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.fp8_gemm import QUANT_BLOCK, block_table, max_tiles, rows_per_group


def _configs(shapes):
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=st) for bn, w, st in shapes]


# Decode-sized tiles stream weights: narrow tiles and deep pipelines keep loads in flight.
SMALL_M = _configs([(32, 4, 4), (64, 4, 4), (64, 4, 6), (128, 4, 4)])
LARGE_M = _configs([(64, 4, 3), (128, 4, 3), (128, 8, 3), (128, 8, 4)])


def block_m(rows: float) -> int:
    for bm in (16, 32, 64):
        if rows <= bm:
            return bm
    return 128


def act_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [S, K] -> (e4m3 [S, K], fp32 scales [S, ceil(K/128)]): DeepSeek's act_quant."""
    s, k = x.shape
    kb = triton.cdiv(k, QUANT_BLOCK)
    q = torch.empty(s, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(s, kb, dtype=torch.float32, device=x.device)
    _act_quant[(s, kb)](x, q, scale, k, x.stride(0), kb, BLOCK=QUANT_BLOCK)
    return q, scale


def fp8_gemm(x, weight, scale_inv, counts, parts: int, act_fp8: bool) -> torch.Tensor:
    """See engine.fp8_gemm.fp8_matmul."""
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
        num_m = triton.cdiv(s, bm)
        table = torch.empty(3, 1, dtype=torch.int32, device=x.device)  # unused when DENSE
    else:
        num_m = max_tiles(s, groups, bm)
        table = block_table(counts, bm, num_m)
    a, a_scale = act_quant(x) if act_fp8 else (x, x)  # a_scale unused without A_FP8
    kernel = _gemm_small if bm <= 32 else _gemm_large
    grid = lambda meta: (num_m, triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    kernel[grid](
        a, a_scale, weight, scale_inv, out, table, s, n, k, r, scale_inv.shape[1],
        scale_inv.shape[2], a.stride(0), out.stride(0), table.stride(0),
        PARTS=parts, DENSE=counts is None, A_FP8=act_fp8, BLOCK_M=bm, BLOCK_K=QUANT_BLOCK,
    )
    return out


@triton.jit
def _act_quant(x_ptr, q_ptr, s_ptr, K, stride_x, KB, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    kb = tl.program_id(1)
    cols = kb * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x)), 1e-12) / 448.0
    tl.store(q_ptr + row * K + cols, (x / scale).to(q_ptr.dtype.element_ty), mask=cols < K)
    tl.store(s_ptr + row * KB + kb, scale)


@triton.jit
def _gemm_body(
    a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, table_ptr,
    S, N, K, R, RB, KB, stride_am, stride_cm, stride_t,
    PARTS: tl.constexpr, DENSE: tl.constexpr, A_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if DENSE:
        group = 0
        row0 = pid_m * BLOCK_M
        row_end = S
    else:
        group = tl.load(table_ptr + pid_m)
        row0 = tl.load(table_ptr + stride_t + pid_m)
        row_end = tl.load(table_ptr + 2 * stride_t + pid_m)
    if group >= 0:
        rm = row0 + tl.arange(0, BLOCK_M)
        m_mask = rm < row_end
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = rn < N
        part = group * PARTS + rn // R  # [BLOCK_N] weight part of each output column
        w_row = (part * R + rn % R).to(tl.int64)
        s_row = (part * RB + (rn % R) // BLOCK_K) * KB
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, KB):
            rk = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            k_mask = rk < K
            a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :],
                        mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(b_ptr + w_row[None, :] * K + rk[:, None],
                        mask=n_mask[None, :] & k_mask[:, None], other=0.0)  # [BLOCK_K, BLOCK_N]
            b_s = tl.load(bs_ptr + s_row + kb, mask=n_mask, other=0.0)
            if A_FP8:
                a_s = tl.load(as_ptr + rm * KB + kb, mask=m_mask, other=0.0)
                acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
            elif a.dtype == tl.float32:
                acc += tl.dot(a, b.to(tl.float32), input_precision="ieee") * b_s[None, :]
            else:
                acc += tl.dot(a, b.to(a.dtype)) * b_s[None, :]
        c = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :]
        tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _quick_bench(fn, quantiles):
    """Autotuning timer: 5 ms warm-up, 20 ms of repeats (the default 25 + 100 ms per config
    would add minutes to a stage's first steps)."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


_KEY = ["N", "K", "BLOCK_M", "A_FP8", "PARTS"]
_gemm_small = triton.autotune(configs=SMALL_M, key=_KEY, do_bench=_quick_bench)(_gemm_body)
_gemm_large = triton.autotune(configs=LARGE_M, key=_KEY, do_bench=_quick_bench)(_gemm_body)
