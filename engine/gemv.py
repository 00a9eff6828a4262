"""One-row products (batch-1 decode) as a Triton GEMV on CUDA, with the bias and a residual add in
its epilogue; every other shape and device goes to torch.

At batch 1 a decode step is nothing but matrix-vector products, so their share of the memory
bandwidth is the step's speed. Measured on the H200 (bench/gpu/gemv_probe.py, the 7B shape's
matrices): cuBLAS picks split-K kernels plus a separate reduction kernel for the narrow ones and
reads 3.5-3.8 TB/s; this plain kernel (4 rows x 512 columns per program, fp32 accumulation)
reads 3.8-4.5 TB/s and needs no second kernel.

Products of many rows (eager steps: prompts) go to cuBLAS with their row count rounded up
(padded_rows): cuBLAS chooses a kernel for each new row count, and on the H200 the first
product at a count it has not seen costs ~4 ms per weight shape, 12-17 ms for one 7B layer's
four (every layer shares them) against 0.4-1.4 ms again
(bench/gpu/runs/s9_call3_gemm_first_call.json).
Prompts bring a new count almost every step; rounded, the counts repeat, and the stage runs
each once when it loads (engine/eager_warmup.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

BLOCK_N, BLOCK_K, WARPS = 4, 512, 4  # the best tile of the probe on every 7B matrix
ROW_TILE_MAX_K, ROW_TILE_WARPS = 8192, 8  # short matrices: one row a program, whole row at once
SHORT_ROWS = 4 * 264  # fewer rows than ~2 programs per H200 SM of the 4-row tile
PAD_ABOVE, PAD_TO = 128, 64  # rows past 128 (beyond the decode graphs) go up to a multiple of 64


def padded_rows(rows: int) -> int:
    """The row count a CUDA product of `rows` rows runs at: rows up to PAD_ABOVE as they are,
    more rounded up to a multiple of PAD_TO. At most 63 rows more: below ~200 rows an H200
    product is bound by reading its weight, whatever the rows; above, at most 20% more
    arithmetic (321 -> 384), 3% near 2,048."""
    return rows if rows <= PAD_ABOVE else -(-rows // PAD_TO) * PAD_TO


def tile_for(n: int, k: int) -> tuple[int, int, int]:
    """(rows, columns, warps) per program for an [n, k] weight. The 4 x 512 tile when the matrix
    has rows enough to keep every SM busy; a short one (V3's router: 256 x 7168) gets one row per
    program and its whole row (up to 8192 columns) loaded in one step, so that each SM has ~28 KB
    in flight instead of 64 programs walking 4 rows 1 KB at a time (9 us for 3.7 MB on the H200,
    bench/fp8/notes.md version 5)."""
    if n >= SHORT_ROWS:
        return BLOCK_N, BLOCK_K, WARPS
    cols = min(ROW_TILE_MAX_K, max(256, 1 << (k - 1).bit_length()))
    return 1, cols, ROW_TILE_WARPS if cols >= 2048 else WARPS


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """One contiguous row on CUDA against a contiguous [N, K] weight of the same float dtype."""
    return (triton is not None and x.is_cuda and x.dim() == 2 and x.shape[0] == 1
            and x.stride(-1) == 1 and weight.dim() == 2 and weight.is_contiguous()
            and weight.dtype == x.dtype and x.dtype in (torch.bfloat16, torch.float16, torch.float32))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, K] @ weight[N, K]^T (+ bias) (+ residual, then written into `residual` itself, a
    tensor the caller owns) -> [T, N]."""
    if not usable(x, weight) or (residual is not None and not residual.is_contiguous()):
        if x.is_cuda and x.dim() == 2 and padded_rows(x.shape[0]) != x.shape[0]:
            return padded_linear(x, weight, bias, residual)
        if residual is None:
            return F.linear(x, weight, bias)
        if bias is None and residual.dtype == x.dtype == weight.dtype:
            return residual.addmm_(x, weight.t())  # the add in the product's epilogue
        return residual.add_(F.linear(x, weight, bias))
    out = residual if residual is not None else x.new_empty(1, weight.shape[0])
    launch(weight, x, bias, out, add_out=residual is not None)
    return out


def padded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """`linear` over x's rows padded with zeros to padded_rows (their products are dropped:
    rows do not mix) -> [T, N], the residual (when given) updated in place as there."""
    t = x.shape[0]
    pad = padded_rows(t) - t
    xp = F.pad(x, (0, 0, 0, pad))
    if residual is None:
        return F.linear(xp, weight, bias)[:t]
    if bias is None and residual.dtype == x.dtype == weight.dtype:  # one rounding, as addmm_
        return residual.copy_(F.pad(residual, (0, 0, 0, pad)).addmm_(xp, weight.t())[:t])
    return residual.add_(F.linear(xp, weight, bias)[:t])


def launch(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
           add_out: bool = False, tile: tuple[int, int, int] = (BLOCK_N, BLOCK_K, WARPS)) -> None:
    """out [N] (+)= weight [N, K] @ x [K] (+ bias): the kernel itself; `tile` = (rows, columns
    per program, warps), varied by bench/gpu/gemv_probe.py."""
    n, k = weight.shape
    rows, cols, warps = tile
    _gemv_kernel[(triton.cdiv(n, rows),)](
        weight, x, weight if bias is None else bias, out, n, k,
        HAS_BIAS=bias is not None, ADD_OUT=add_out, BLOCK_N=rows, BLOCK_K=cols, num_warps=warps)


def apply(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x), through `linear` when it is a plain nn.Linear (FP8 linears keep their own)."""
    if type(module) is nn.Linear:
        return linear(x, module.weight, module.bias)
    return module(x)


if triton is not None:

    @triton.jit
    def _gemv_kernel(W, X, B, Y, N, K, HAS_BIAS: tl.constexpr, ADD_OUT: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            cmask = cols < K
            w = tl.load(W + rows[:, None].to(tl.int64) * K + cols[None, :],
                        mask=rmask[:, None] & cmask[None, :], other=0.0)
            x = tl.load(X + cols, mask=cmask, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        y = tl.sum(acc, 1)
        if HAS_BIAS:
            y += tl.load(B + rows, mask=rmask, other=0.0).to(tl.float32)
        if ADD_OUT:  # the residual stream, added before the one rounding
            y += tl.load(Y + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(Y + rows, y.to(Y.dtype.element_ty), mask=rmask)
