"""Llama and Qwen2: pre-norm decoder layers with rotary GQA attention and a SiLU-gated MLP."""
from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from engine import fused, gemv
from engine.attention import paged_attention
from engine.batch import ForwardContext
from engine.errors import CheckpointError
from engine.models.base import LayerKV, RMSNorm, StageModel
from engine.packed_linear import PackedLinear, packed
from engine.paged_decode import decode_attention
from engine.rope import RotaryEmbedding, apply_rope


class LlamaAttention(nn.Module):
    """Grouped-query attention with rotary positions; q/k/v biases when the config asks."""

    def __init__(self, config, rotary: RotaryEmbedding, qkv_bias: bool, o_bias: bool):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, d
        )
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=qkv_bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=qkv_bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=o_bias)
        self.rotary = [rotary]  # a list: shared, not a submodule
        self.scale = d**-0.5

    def forward(self, x: torch.Tensor, ctx: ForwardContext, kv: LayerKV) -> torch.Tensor:
        t = x.shape[0]
        cos, sin = self.rotary[0](ctx.positions, x.dtype)
        qkv = packed(self, "q_proj")
        if qkv is not None and self._fused_decode(x, ctx, kv):
            # one product, then bias + rotary + both cache writes in one kernel
            q = fused.rope_qkv_to_cache(qkv(x, with_bias=False), qkv.bias, cos, sin, *kv,
                                        ctx.slot_mapping, self.num_heads)
            out = decode_attention(q, *kv, ctx.decode_tables, self.scale)
        else:
            q, k, v = self._project(x, qkv)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            out = paged_attention(q, k, v, kv, ctx, self.scale)  # [T, Hq, D]
        return gemv.apply(self.o_proj, out.reshape(t, -1))

    def _project(self, x: torch.Tensor, qkv: PackedLinear | None) -> tuple[torch.Tensor, ...]:
        """x [T, H] -> q [T, Hq, D], k and v [T, Hkv, D]."""
        t = x.shape[0]
        q, k, v = qkv.split(x) if qkv is not None else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        return (q.view(t, self.num_heads, self.head_dim),
                k.view(t, self.num_kv_heads, self.head_dim),
                v.view(t, self.num_kv_heads, self.head_dim))

    def _fused_decode(self, x: torch.Tensor, ctx: ForwardContext, kv: LayerKV) -> bool:
        """A decode step from the block tables (engine/decode_graphs.py) on CUDA, caches in the
        activations' dtype, a power-of-two rotary half: the one-kernel rotary + cache write."""
        half = self.head_dim // 2
        return (ctx.decode_tables is not None and fused.usable(x) and x.shape[0] > 0
                and all(c.dtype == x.dtype and c.is_contiguous() for c in kv)
                and half & (half - 1) == 0)


class LlamaMLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, H] -> down(silu(gate) * up) [T, H], plus `residual` when given: then added in
        the down product itself (and `residual`, a tensor the caller owns, is overwritten)."""
        gate_up = packed(self, "gate_proj")
        gate, up = gate_up.split(x) if gate_up is not None else (self.gate_proj(x), self.up_proj(x))
        if gate.shape[0] and fused.usable(gate) and fused.usable(up):
            act = fused.silu_mul(gate, up)  # one kernel instead of two
        else:
            act = F.silu(gate) * up
        down = self.down_proj
        if residual is None:
            return gemv.apply(down, act)
        if type(down) is nn.Linear:  # the residual add in the product's epilogue
            return gemv.linear(act, down.weight, down.bias, residual=residual)
        return residual + down(act)


class LlamaDecoderLayer(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config, attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = attn
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, ctx: ForwardContext, kv: LayerKV) -> torch.Tensor:
        # h = x + attn(...) and its norm in one kernel (CUDA); h is new, so the dense MLP may add
        # its output into h in place
        h, normed = self.post_attention_layernorm.add_forward(
            x, self.self_attn(self.input_layernorm(x), ctx, kv))
        if isinstance(self.mlp, LlamaMLP):
            return self.mlp(normed, residual=h)
        return h + self.mlp(normed)


class LlamaForCausalLM(StageModel):
    """DeepSeek LLM 7B/67B, R1-Distill-Llama: no biases unless attention_bias / mlp_bias."""

    def qkv_bias(self) -> bool:
        return bool(self.config.get("attention_bias", False))

    def o_bias(self) -> bool:
        return bool(self.config.get("attention_bias", False))

    @cached_property
    def rotary(self) -> RotaryEmbedding:
        c = self.config
        return RotaryEmbedding(c.rope, c.head_dim, c.max_position_embeddings)

    def make_layer(self, layer_idx: int) -> nn.Module:
        c = self.config
        if c.get("use_sliding_window", False):
            raise CheckpointError("config.json: sliding-window attention is not supported")
        attn = LlamaAttention(c, self.rotary, self.qkv_bias(), self.o_bias())
        mlp = LlamaMLP(c.hidden_size, c.intermediate_size, bool(c.get("mlp_bias", False)))
        return LlamaDecoderLayer(c, attn, mlp)

    def kv_token_shapes(self) -> list[tuple[int, ...]]:
        shape = (self.config.num_key_value_heads, self.config.head_dim)
        return [shape, shape]


class Qwen2ForCausalLM(LlamaForCausalLM):
    """R1-Distill-Qwen: Llama with biases on q/k/v (not on o)."""

    def qkv_bias(self) -> bool:
        return True

    def o_bias(self) -> bool:
        return False
