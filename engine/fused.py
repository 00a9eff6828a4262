"""One-kernel forms of the small per-layer operations on CUDA: RMSNorm (alone or after the
residual add), half-split rotary (alone, or with the q/k/v bias and the KV-cache write of a
packed q/k/v projection) and the gated MLP's silu(gate) * up.

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


def add_rms_norm(x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, r [T, N] contiguous, one dtype -> (h = x + r, RMSNorm(h)): the residual add and the
    next norm in one kernel (h rounded to x's dtype first, as the two torch ops do)."""
    n = x.shape[-1]
    h = torch.empty_like(x)
    y = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    block = triton.next_power_of_2(n)
    _add_rms_norm_kernel[(x.shape[0],)](x, r, weight, h, y, n, eps,
                                        BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return h, y


def rope_qkv_to_cache(qkv: torch.Tensor, bias: torch.Tensor | None, cos: torch.Tensor,
                      sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      slots: torch.Tensor, num_heads: int) -> torch.Tensor:
    """qkv [T, (Hq + 2 Hkv) D] (a packed projection without its bias, contiguous), bias
    [(Hq + 2 Hkv) D] or None, cos/sin [T, D], caches [S, Hkv, D], slots [T] long ->
    rotated queries [T, Hq, D]; the rotated keys and the values go to the caches at `slots`.
    One kernel for what is otherwise a bias add, two rotaries and two cache writes."""
    t = qkv.shape[0]
    hkv, d = k_cache.shape[1], k_cache.shape[2]
    q = qkv.new_empty(t, num_heads, d)
    _rope_qkv_kernel[(t, num_heads + 2 * hkv)](
        qkv, qkv if bias is None else bias, cos, sin, q, k_cache, v_cache, slots,
        qkv.stride(0), cos.stride(0), sin.stride(0), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        HQ=num_heads, HKV=hkv, HALF=d // 2, HAS_BIAS=bias is not None)
    return q


def rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              interleaved: bool = False) -> torch.Tensor:
    """x [T, heads, D], cos/sin [T, D] (two equal halves) -> x rotated (half-split layout);
    interleaved: x holds (even, odd) pairs (DeepSeek), rotated into half-split order as
    engine.rope.apply_rope_interleaved does (one kernel instead of seven)."""
    t, heads, d = x.shape
    y = x.new_empty(t, heads, d)
    _rope_half_kernel[(t, heads)](x, cos, sin, y, x.stride(0), x.stride(1), cos.stride(0),
                                  sin.stride(0), y.stride(0), y.stride(1), HALF=d // 2,
                                  INTERLEAVED=interleaved)
    return y


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for [T, I] tensors of one dtype, rows may be strided (the halves of a
    packed gate/up product) -> a new contiguous [T, I]."""
    t, i = gate.shape
    out = torch.empty(t, i, dtype=gate.dtype, device=gate.device)
    _silu_mul_kernel[(t, triton.cdiv(i, 1024))](gate, up, out, i, gate.stride(0), up.stride(0),
                                               BLOCK=1024)
    return out


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(G, U, O, n, sg, su, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = i < n
        g = tl.load(G + row * sg + i, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + row * su + i, mask=mask, other=0.0)
        silu = (g / (1.0 + tl.exp(-g))).to(u.dtype)  # F.silu rounds to the input dtype first
        tl.store(O + row * n + i, (silu.to(tl.float32) * u.to(tl.float32)).to(O.dtype.element_ty),
                 mask=mask)

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
    def _add_rms_norm_kernel(X, R, W, H, Y, n, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(X + row * n + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(R + row * n + cols, mask=mask, other=0.0).to(tl.float32)
        h = (x + r).to(H.dtype.element_ty)  # the residual stream keeps the activation dtype
        tl.store(H + row * n + cols, h, mask=mask)
        hf = h.to(tl.float32)
        inv = tl.rsqrt(tl.sum(hf * hf, axis=0) / n + eps)
        normed = (hf * inv).to(H.dtype.element_ty)
        w = tl.load(W + cols, mask=mask, other=0.0)
        tl.store(Y + row * n + cols, (w.to(tl.float32) * normed.to(tl.float32)).to(Y.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def _rope_qkv_kernel(QKV, B, COS, SIN, Q, KC, VC, SLOTS, sx, sct, sst, sqt, sqh,
                         skc, skh, svc, svh, HQ: tl.constexpr, HKV: tl.constexpr,
                         HALF: tl.constexpr, HAS_BIAS: tl.constexpr):
        # one program per (token, head of the packed row: Hq query, Hkv key, Hkv value heads)
        t, h = tl.program_id(0).to(tl.int64), tl.program_id(1)
        d = tl.arange(0, HALF)
        col = h * 2 * HALF
        x1 = tl.load(QKV + t * sx + col + d).to(tl.float32)
        x2 = tl.load(QKV + t * sx + col + HALF + d).to(tl.float32)
        if HAS_BIAS:  # the projection's output dtype first, as nn.Linear's biased output
            x1 = (x1 + tl.load(B + col + d).to(tl.float32)).to(QKV.dtype.element_ty).to(tl.float32)
            x2 = (x2 + tl.load(B + col + HALF + d).to(tl.float32)).to(QKV.dtype.element_ty).to(tl.float32)
        if h >= HQ + HKV:  # a value head: stored as it is
            out = VC + tl.load(SLOTS + t) * svc + (h - HQ - HKV) * svh
            tl.store(out + d, x1.to(VC.dtype.element_ty))
            tl.store(out + HALF + d, x2.to(VC.dtype.element_ty))
        else:
            c = tl.load(COS + t * sct + d).to(tl.float32)
            s = tl.load(SIN + t * sst + d).to(tl.float32)
            y1, y2 = x1 * c - x2 * s, x2 * c + x1 * s
            if h < HQ:
                out = Q + t * sqt + h * sqh
                tl.store(out + d, y1.to(Q.dtype.element_ty))
                tl.store(out + HALF + d, y2.to(Q.dtype.element_ty))
            else:
                out = KC + tl.load(SLOTS + t) * skc + (h - HQ) * skh
                tl.store(out + d, y1.to(KC.dtype.element_ty))
                tl.store(out + HALF + d, y2.to(KC.dtype.element_ty))

    @triton.jit
    def _rope_half_kernel(X, COS, SIN, Y, sxt, sxh, sct, sst, syt, syh, HALF: tl.constexpr,
                          INTERLEAVED: tl.constexpr):
        t, h = tl.program_id(0).to(tl.int64), tl.program_id(1)
        d = tl.arange(0, HALF)
        if INTERLEAVED:  # pairs (x[2d], x[2d + 1])
            x1 = tl.load(X + t * sxt + h * sxh + 2 * d).to(tl.float32)
            x2 = tl.load(X + t * sxt + h * sxh + 2 * d + 1).to(tl.float32)
        else:
            x1 = tl.load(X + t * sxt + h * sxh + d).to(tl.float32)
            x2 = tl.load(X + t * sxt + h * sxh + HALF + d).to(tl.float32)
        c = tl.load(COS + t * sct + d).to(tl.float32)
        s = tl.load(SIN + t * sst + d).to(tl.float32)
        out = Y + t * syt + h * syh
        tl.store(out + d, (x1 * c - x2 * s).to(Y.dtype.element_ty))
        tl.store(out + HALF + d, (x2 * c + x1 * s).to(Y.dtype.element_ty))
