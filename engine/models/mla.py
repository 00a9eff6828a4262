"""Multi-head latent attention (DeepSeek-V2/V3) over a cache of compressed latents.

Each token caches one row: its normalised KV latent [kv_lora_rank] and its roped, head-shared
key part [qk_rope_head_dim]. Decodes attend in latent space ("weight absorption": W_UK folded
into the query, W_UV applied after attention), so nothing is expanded per head; prefill chunks,
whose many queries amortise it, expand the context into per-head keys and values instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from engine import gemv
from engine.attention import (
    attention_layout, gather_context, pad_queries, sdpa, step_parts, unpad_queries, write_cache,
)
from engine.batch import ForwardContext
from engine.models.base import RMSNorm
from engine.packed_linear import packed
from engine.paged_decode import decode_attention
from engine.rope import RotaryEmbedding, apply_rope, apply_rope_interleaved

LATENT_NORM_EPS = 1e-6  # q_a_layernorm / kv_a_layernorm: the reference code's default, not rms_norm_eps


@dataclass(frozen=True)
class MLASpec:
    """The dimensions of one MLA layer, read from the model config."""

    hidden_size: int
    num_heads: int
    q_lora_rank: int | None  # None: queries come straight from q_proj
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    softmax_scale: float
    rope_interleave: bool = True
    attention_bias: bool = False

    @property
    def latent_dim(self) -> int:
        """Width of one cached row: latent + rope key."""
        return self.kv_lora_rank + self.qk_rope_head_dim


def yarn_softmax_scale(rope: dict, qk_head_dim: int, max_position_embeddings: int) -> float:
    """qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN (DeepSeek's rule)."""
    scale = qk_head_dim**-0.5
    mscale_all_dim = rope.get("mscale_all_dim") or 0
    if rope["rope_type"] != "default" and mscale_all_dim:
        factor = rope.get("factor") or max_position_embeddings / rope["original_max_position_embeddings"]
        if factor > 1:
            m = 0.1 * mscale_all_dim * math.log(factor) + 1.0
            scale *= m * m
    return scale


class MLAttention(nn.Module):
    """Low-rank queries and keys/values; the cache holds latents, not per-head keys and values."""

    # Native FP8 keeps kv_b_proj dequantized: decodes slice its weight per head (W_UK, W_UV) for
    # the absorbed attention; it is 0.3% of a V3 layer (vLLM does the same).
    fp8_keep_dequantized = ("kv_b_proj",)

    def __init__(self, spec: MLASpec, rotary: RotaryEmbedding):
        super().__init__()
        s, bias = spec, spec.attention_bias
        self.spec, self.rotary = spec, rotary
        qk_head_dim = s.qk_nope_head_dim + s.qk_rope_head_dim
        if s.q_lora_rank is None:
            self.q_proj = nn.Linear(s.hidden_size, s.num_heads * qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(s.hidden_size, s.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(s.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(s.q_lora_rank, s.num_heads * qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(s.hidden_size, s.latent_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(s.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(
            s.kv_lora_rank, s.num_heads * (s.qk_nope_head_dim + s.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(s.num_heads * s.v_head_dim, s.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, kv: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x [T, H] -> [T, H]; writes the step's latent rows into kv[0] [slots, latent_dim]."""
        s, t = self.spec, x.shape[0]
        q, kv_a = self._project(x)
        q_nope, q_pe = q.view(t, s.num_heads, -1).split([s.qk_nope_head_dim, s.qk_rope_head_dim], -1)
        latent, k_pe = kv_a.split([s.kv_lora_rank, s.qk_rope_head_dim], -1)
        cos, sin = self.rotary(ctx.positions, x.dtype)
        rope = apply_rope_interleaved if s.rope_interleave else apply_rope
        q_pe, k_pe = rope(q_pe, cos, sin), rope(k_pe[:, None], cos, sin)[:, 0]  # [T, nh, r], [T, r]
        write_cache(kv[0], ctx, torch.cat([self.kv_a_layernorm(latent), k_pe], dim=-1))
        parts = step_parts(ctx)  # decodes absorbed, prompt chunks expanded
        if parts.prefill is None:
            out = self._absorbed(q_nope, q_pe, kv[0], parts.decode)
        elif parts.decode is None:
            out = self._expanded(q_nope, q_pe, kv[0], parts.prefill)
        else:
            out = q.new_empty(t, s.num_heads, s.v_head_dim)
            out[parts.decode_rows] = self._absorbed(
                q_nope[parts.decode_rows], q_pe[parts.decode_rows], kv[0], parts.decode
            )
            out[parts.prefill_rows] = self._expanded(
                q_nope[parts.prefill_rows], q_pe[parts.prefill_rows], kv[0], parts.prefill
            )
        return gemv.apply(self.o_proj, out.reshape(t, -1))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> queries [T, nh * (nope + r)] and kv_a [T, kvr + r]; q_a and kv_a as one
        product when packed (engine/packed_linear.py)."""
        if self.spec.q_lora_rank is None:
            return self.q_proj(x), self.kv_a_proj_with_mqa(x)
        both = packed(self, "q_a_proj")
        q_a, kv_a = both.split(x) if both is not None else (self.q_a_proj(x), self.kv_a_proj_with_mqa(x))
        return gemv.apply(self.q_b_proj, self.q_a_layernorm(q_a)), kv_a

    def _up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj as W_UK [nh, nope, kvr] and W_UV [nh, kvr, v] (views, no copies)."""
        s = self.spec
        w = self.kv_b_proj.weight.view(s.num_heads, s.qk_nope_head_dim + s.v_head_dim, s.kv_lora_rank)
        return w[:, : s.qk_nope_head_dim], w[:, s.qk_nope_head_dim :].transpose(1, 2)

    def _absorbed(self, q_nope, q_pe, cache: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """One query per sequence: q_nope [B, nh, nope], q_pe [B, nh, r] -> [B, nh, v]."""
        s = self.spec
        w_uk, w_uv = self._up_weights()
        q_latent = torch.bmm(q_nope.transpose(0, 1), w_uk).transpose(0, 1)  # [B, nh, kvr]
        query = torch.cat([q_latent, q_pe], dim=-1)  # [B, nh, kvr + r]
        if ctx.decode_tables is not None:  # the latent rows are the keys and (their first kvr) values
            latent = cache[:, None, :]  # [S, 1, kvr + r]
            out_latent = decode_attention(query, latent, latent[..., : s.kv_lora_rank],
                                          ctx.decode_tables, s.softmax_scale)  # [B, nh, kvr]
            return torch.bmm(out_latent.transpose(0, 1), w_uv).transpose(0, 1)  # [B, nh, v]
        rows = gather_context(cache, ctx).to(query.dtype)  # [B, C, kvr + r]
        scores = torch.bmm(query, rows.transpose(1, 2)).float() * s.softmax_scale  # [B, nh, C]
        if not all(n == ctx.context_slots.shape[1] for n in ctx.context_lens):
            scores.masked_fill_(~ctx.context_mask[:, None, :], float("-inf"))
        probs = scores.softmax(dim=-1).to(query.dtype)
        out_latent = torch.bmm(probs, rows[..., : s.kv_lora_rank])  # [B, nh, kvr]
        return torch.bmm(out_latent.transpose(0, 1), w_uv).transpose(0, 1)  # [B, nh, v]

    def _expanded(self, q_nope, q_pe, cache: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Prefill chunks: q [Tp, nh, ...] against per-head keys/values expanded from the latents."""
        s = self.spec
        layout = attention_layout(ctx)
        rows = gather_context(cache, ctx).to(q_nope.dtype)  # [B, C, kvr + r]
        b, c = rows.shape[:2]
        kv = self.kv_b_proj(rows[..., : s.kv_lora_rank]).view(b, c, s.num_heads, -1)
        k_nope, values = kv.split([s.qk_nope_head_dim, s.v_head_dim], dim=-1)  # [B, C, nh, *]
        k_pe = rows[..., None, s.kv_lora_rank :].expand(b, c, s.num_heads, s.qk_rope_head_dim)
        keys = torch.cat([k_nope, k_pe], dim=-1)  # [B, C, nh, nope + r]
        query = pad_queries(torch.cat([q_nope, q_pe], dim=-1), layout, ctx.num_seqs)  # [B, maxQ, nh, *]
        out = sdpa(
            query.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=layout.attn_mask,
            is_causal=layout.is_causal,
            scale=s.softmax_scale,
        )
        return unpad_queries(out.transpose(1, 2), layout)  # [Tp, nh, v]
