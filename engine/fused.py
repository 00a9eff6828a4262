"""One-kernel forms of the small per-layer operations on CUDA: RMSNorm, half-split rotary and
the gated MLP's silu(gate) * up.

In torch each is 5-10 elementwise kernels; inside a decode graph every kernel costs launch
latency on the device (~2-3 µs) whatever its size, and a 28-layer step ran ~1,000 of them. The
torch forms (engine/models/base.py, engine/rope.py) serve other devices and define the result:
these compute the same in fp32 with one rounding at the end.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None


def usable(x: torch.Tensor) -> bool:
    """A CUDA tensor whose last dimension is contiguous, with Triton installed."""
    return triton is not None and x.is_cuda and x.stride(-1) == 1


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, N] (rows may be strided) -> weight * (x / rms(x)).to(x.dtype), as RMSNorm."""
    n = x.shape[-1]
    y = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(x.shape[0],)](x, weight, y, x.stride(0), y.stride(0), n, eps,
                                    BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return y


def rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D], cos/sin [T, D] (two equal halves) -> x rotated (half-split layout)."""
    t, heads, d = x.shape
    y = torch.empty_like(x)
    _rope_half_kernel[(t, heads)](x, cos, sin, y, x.stride(0), x.stride(1), cos.stride(0),
                                  sin.stride(0), y.stride(0), y.stride(1), HALF=d // 2)
    return y


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for contiguous [T, I] tensors of one dtype."""
    out = torch.empty_like(gate)
    n = gate.numel()
    _silu_mul_kernel[(triton.cdiv(n, 1024),)](gate, up, out, n, BLOCK=1024)
    return out


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(G, U, O, n, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = i < n
        g = tl.load(G + i, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + i, mask=mask, other=0.0)
        silu = (g / (1.0 + tl.exp(-g))).to(u.dtype)  # F.silu rounds to the input dtype first
        tl.store(O + i, (silu.to(tl.float32) * u.to(tl.float32)).to(O.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_norm_kernel(X, W, Y, sx, sy, n, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(X + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
        inv = tl.rsqrt(tl.sum(x * x, axis=0) / n + eps)
        normed = (x * inv).to(X.dtype.element_ty)  # RMSNorm rounds to the input dtype first
        w = tl.load(W + cols, mask=mask, other=0.0)
        tl.store(Y + row * sy + cols, (w.to(tl.float32) * normed.to(tl.float32)).to(Y.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def _rope_half_kernel(X, COS, SIN, Y, sxt, sxh, sct, sst, syt, syh, HALF: tl.constexpr):
        t, h = tl.program_id(0).to(tl.int64), tl.program_id(1)
        d = tl.arange(0, HALF)
        x1 = tl.load(X + t * sxt + h * sxh + d).to(tl.float32)
        x2 = tl.load(X + t * sxt + h * sxh + HALF + d).to(tl.float32)
        c = tl.load(COS + t * sct + d).to(tl.float32)
        s = tl.load(SIN + t * sst + d).to(tl.float32)
        out = Y + t * syt + h * syh
        tl.store(out + d, (x1 * c - x2 * s).to(Y.dtype.element_ty))
        tl.store(out + HALF + d, (x2 * c + x1 * s).to(Y.dtype.element_ty))
