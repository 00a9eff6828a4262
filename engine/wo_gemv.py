"""Weight-only GEMV for a few rows: FP8 block-scaled (or bf16) weights times bf16 activations on
the CUDA cores, for batch-1 (and few-row) decode.

At batch 1 a product reads every weight byte once and does two flops per byte: nothing for a
tensor core to win, and an MMA tile needs the weight reshuffled into its operand layout and the
activations quantized first (two more kernels). Here each program streams BLOCK_N weight rows
in [KSUB, 128] slabs (16-byte loads, many programs per SM so enough bytes are in flight),
widens them to fp32, multiplies by the activations and sums each 128-channel block before its
weight scale applies: one scale multiply per 128 products, fp32 throughout, one rounding at
the end. Activations stay bf16 (no e4m3 quantization: this path is exact up to fp32 sums).
bench/fp8/notes.md has the measurements that choose it over the MMA kernel (engine/fp8_kernels.py).

Weights are [P, R, K] parts with scales [P, ceil(R/128), ceil(K/128)] as in engine/fp8_gemm.py;
`row_dot` is shared with the grouped expert kernels (engine/moe_gemv.py).
"""
from __future__ import annotations

import torch

from engine.fp8_gemm import QUANT_BLOCK

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

MAX_ROWS = 4  # above it the MMA kernel wins (bench/fp8/notes.md, version 5)
# (BLOCK_N rows, KSUB 128-channel blocks per step, warps): ~4 KB of FP8 weights per step
DENSE_TILE = (4, 8, 4)


def fits(rows: int, x_dtype: torch.dtype, weight_dtype: torch.dtype) -> bool:
    """Whether `rows` activation rows of x_dtype against a weight of weight_dtype take this path."""
    return (0 < rows <= MAX_ROWS and x_dtype in (torch.bfloat16, torch.float16)
            and weight_dtype in (torch.float8_e4m3fn, x_dtype))


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """`fits`, on CUDA with triton, x [M, K] and a contiguous weight."""
    return (triton is not None and x.is_cuda and x.dim() == 2 and weight.is_contiguous()
            and fits(x.shape[0], x.dtype, weight.dtype))


def linear(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor | None,
           tile: tuple[int, int, int] = DENSE_TILE,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [M, K] (M <= MAX_ROWS) @ weight [N, K]^T (FP8 with scale_inv [ceil(N/128), ceil(K/128)],
    or x's dtype with None) -> [M, N] in out_dtype (default x's)."""
    x = x.contiguous()
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, dtype=out_dtype or x.dtype, device=x.device)
    bn, ksub, warps = tile
    scaled = scale_inv is not None
    _dense_kernel[(triton.cdiv(n, bn),)](
        weight, scale_inv if scaled else weight, x, out, m, n, k, triton.cdiv(k, QUANT_BLOCK),
        SCALED=scaled, BLOCK_M=triton.next_power_of_2(m), BLOCK_N=bn, KSUB=ksub,
        num_warps=warps)
    return out


def reference_linear(x: torch.Tensor, weight: torch.Tensor,
                     scale_inv: torch.Tensor | None) -> torch.Tensor:
    """The kernel's arithmetic in torch: bf16 activations times the dequantized weight in fp32."""
    w = weight.float()
    if scale_inv is not None:
        n, k = weight.shape
        s = scale_inv.repeat_interleave(QUANT_BLOCK, 0).repeat_interleave(QUANT_BLOCK, 1)
        w = w * s[:n, :k]
    return (x.float() @ w.T).to(x.dtype)


if triton is not None:

    @triton.jit
    def row_dot(W, S, X, w_rows, s_rows, rmask, xs, xmask, K, KB, SCALED: tl.constexpr,
                KSUB: tl.constexpr):
        """sum_k W[w_rows, k] * X[xs, k] -> [BLOCK_M, BLOCK_N] fp32: w_rows/s_rows [BLOCK_N]
        int64 rows of the weight and of its scales, xs [BLOCK_M] activation row offsets."""
        blk = tl.arange(0, KSUB)
        c = tl.arange(0, 128)
        acc = tl.zeros([xs.shape[0], w_rows.shape[0], KSUB], tl.float32)
        for kb0 in range(0, KB, KSUB):
            kbs = kb0 + blk  # [KSUB] 128-channel blocks of this step
            cols = kbs[:, None] * 128 + c[None, :]  # [KSUB, 128]
            cmask = cols < K
            w = tl.load(W + w_rows[:, None, None] * K + cols[None, :, :],
                        mask=rmask[:, None, None] & cmask[None, :, :], other=0.0)
            x = tl.load(X + xs[:, None, None] + cols[None, :, :],
                        mask=xmask[:, None, None] & cmask[None, :, :], other=0.0)
            # [BLOCK_M, BLOCK_N, KSUB]: each 128-channel block's sum, then its scale
            part = tl.sum(w.to(tl.float32)[None, :, :, :] * x.to(tl.float32)[:, None, :, :], axis=3)
            if SCALED:
                s = tl.load(S + s_rows[:, None] * KB + kbs[None, :],
                            mask=rmask[:, None] & (kbs < KB)[None, :], other=0.0)
                part = part * s[None, :, :]
            acc += part
        return tl.sum(acc, axis=2)

    @triton.jit
    def _dense_kernel(W, S, X, Y, M, N, K, KB, SCALED: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, KSUB: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        w_rows = rows.to(tl.int64)
        ms = tl.arange(0, BLOCK_M)
        mmask = ms < M
        y = row_dot(W, S, X, w_rows, w_rows // 128, rmask, ms.to(tl.int64) * K, mmask, K, KB,
                    SCALED, KSUB)  # [BLOCK_M, BLOCK_N]
        tl.store(Y + ms[:, None] * N + rows[None, :], y.to(Y.dtype.element_ty),
                 mask=mmask[:, None] & rmask[None, :])
