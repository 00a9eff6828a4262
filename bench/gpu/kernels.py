"""The engine's Triton kernels against plain torch on random bf16 data, on the GPU:
‖out − ref‖ / ‖ref‖ of each (bf16 operands land between 1e-3 and 1e-2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import fused
from engine.paged_decode import DecodeTables, decode_attention, decode_attention_reference


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def _bf16_scores(q, keys, values, t: DecodeTables, scale: float) -> torch.Tensor:
    """What the eager path computes: scores and probabilities rounded to bf16 (bmm outputs)."""
    out = []
    for b, (row, n) in enumerate(zip(t.seq_rows.tolist(), t.context_lens.tolist())):
        blocks = t.block_table[row, : -(-n // t.block_size)].long()
        slots = (blocks[:, None] * t.block_size + torch.arange(t.block_size, device="cuda")).flatten()[:n]
        k = keys[slots].repeat_interleave(q.shape[1] // keys.shape[1], dim=1).transpose(0, 1)
        v = values[slots].repeat_interleave(q.shape[1] // keys.shape[1], dim=1).transpose(0, 1)
        scores = torch.bmm(q[b][:, None], k.transpose(1, 2)).float() * scale  # [H, 1, n]
        out.append(torch.bmm(scores.softmax(-1).to(q.dtype), v)[:, 0])
    return torch.stack(out)


def _decode(heads: int, kv_heads: int, dk: int, dv: int, q_scale: float = 1.0) -> dict:
    cache = torch.randn(64 * 16, kv_heads, max(dk, dv), device="cuda", dtype=torch.bfloat16)
    keys, values = cache[..., :dk], cache[..., :dv]
    table = torch.randperm(64, device="cuda").to(torch.int32).view(4, 16)
    lens = torch.tensor([1, 17, 200, 255], device="cuda", dtype=torch.int32)  # 16 context splits
    rows = torch.tensor([2, 0, 3, 1], device="cuda", dtype=torch.int32)
    t = DecodeTables(table, rows, lens, 16)
    q = torch.randn(4, heads, dk, device="cuda", dtype=torch.bfloat16) * q_scale
    want = decode_attention_reference(q, keys, values, t, 0.08)
    return {"triton": _rel(decode_attention(q, keys, values, t, 0.08), want),
            "eager_bf16_scores": _rel(_bf16_scores(q, keys, values, t, 0.08), want)}


def check() -> dict:
    x = torch.randn(8, 3584, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3584, device="cuda", dtype=torch.bfloat16)
    xf = x.float()
    norm_ref = w.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6))
    q = torch.randn(8, 28, 128, device="cuda", dtype=torch.bfloat16)
    freqs = torch.randn(8, 64, device="cuda")
    cos, sin = torch.cat([freqs.cos()] * 2, -1), torch.cat([freqs.sin()] * 2, -1)
    qf, half = q.float(), 64
    rope_ref = qf * cos[:, None] + torch.cat([-qf[..., half:], qf[..., :half]], -1) * sin[:, None]
    g, u = (torch.randn(8, 18944, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return {
        "decode_gqa": _decode(28, 4, 128, 128),
        "decode_mla": _decode(128, 1, 576, 512),
        "decode_mla_large_scores": _decode(128, 1, 576, 512, q_scale=8.0),  # scores of order 100
        "rms_norm": _rel(fused.rms_norm(x, w, 1e-6), norm_ref),
        "rope_half": _rel(fused.rope_half(q, cos.bfloat16(), sin.bfloat16()), rope_ref),
        "silu_mul": _rel(fused.silu_mul(g, u), F.silu(g.float()) * u.float()),
        "add_rms_norm": _rel(fused.add_rms_norm(x, x, w, 1e-6)[1], _norm_ref(x + x, w)),
        "rope_qkv_to_cache": _rope_qkv(q, cos.bfloat16(), sin.bfloat16(), rope_ref),
    }


def _norm_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return w.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6))


def _rope_qkv(q: torch.Tensor, cos, sin, rope_ref: torch.Tensor) -> float:
    """q [T, 28, 128] as the query part of a packed row (4 key and 4 value heads of zeros)."""
    t = q.shape[0]
    qkv = torch.cat([q.flatten(1), q.new_zeros(t, 8 * 128)], 1)
    cache = q.new_zeros(2, 64, 4, 128)
    slots = torch.arange(t, device=q.device)
    return _rel(fused.rope_qkv_to_cache(qkv, None, cos, sin, cache[0], cache[1], slots, 28), rope_ref)
