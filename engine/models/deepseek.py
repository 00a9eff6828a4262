"""DeepSeek-V2 and V3: multi-head latent attention, and mixture-of-experts MLPs after the first
`first_k_dense_replace` layers (every `moe_layer_freq`-th one).

Multi-token-prediction layers (`num_nextn_predict_layers`, stored as layers >= num_hidden_layers)
are not part of any stage, so their tensors are never read.
"""
from __future__ import annotations

from functools import cached_property

from torch import nn

from engine.errors import CheckpointError
from engine.models.base import StageModel
from engine.models.llama import LlamaDecoderLayer, LlamaMLP
from engine.models.mla import MLASpec, MLAttention, yarn_softmax_scale
from engine.models.moe import MoE, MoESpec, expert_checkpoint_names
from engine.rope import RotaryEmbedding

_SCORING = {"noaux_tc": "sigmoid", "greedy": "softmax", "group_limited_greedy": "softmax"}


def _int_field(config, name: str, default: int | None = None, minimum: int = 1) -> int:
    """An integer field of config.json, or CheckpointError naming it."""
    value = config.get(name)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CheckpointError(f"config.json: field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


class DeepseekV2ForCausalLM(StageModel):
    """DeepSeek-V2 / V2-Lite: softmax routing (greedy or group-limited), interleaved rope."""

    default_topk_method = "greedy"

    def rope_interleave(self) -> bool:
        return True  # V2 rotates interleaved pairs; the config has no switch

    @cached_property
    def mla_spec(self) -> MLASpec:
        c = self.config
        nope, rope = _int_field(c, "qk_nope_head_dim"), _int_field(c, "qk_rope_head_dim")
        q_lora = c.get("q_lora_rank")
        return MLASpec(
            hidden_size=c.hidden_size,
            num_heads=c.num_attention_heads,
            q_lora_rank=None if q_lora is None else _int_field(c, "q_lora_rank"),
            kv_lora_rank=_int_field(c, "kv_lora_rank"),
            qk_nope_head_dim=nope,
            qk_rope_head_dim=rope,
            v_head_dim=_int_field(c, "v_head_dim"),
            softmax_scale=yarn_softmax_scale(c.rope, nope + rope, c.max_position_embeddings),
            rope_interleave=self.rope_interleave(),
            attention_bias=bool(c.get("attention_bias", False)),
        )

    @cached_property
    def moe_spec(self) -> MoESpec | None:
        c = self.config
        if not c.get("n_routed_experts"):
            return None
        method = c.get("topk_method") or self.default_topk_method
        scoring = c.get("scoring_func") or _SCORING.get(method)
        if method not in _SCORING or scoring != _SCORING[method]:
            raise CheckpointError(
                f"config.json: topk_method {method!r} with scoring_func {scoring!r} is not supported "
                f"(noaux_tc+sigmoid, greedy+softmax, group_limited_greedy+softmax)"
            )
        try:
            return MoESpec(
                hidden_size=c.hidden_size,
                num_experts=_int_field(c, "n_routed_experts"),
                top_k=_int_field(c, "num_experts_per_tok"),
                expert_intermediate_size=_int_field(c, "moe_intermediate_size"),
                num_shared_experts=_int_field(c, "n_shared_experts", 0, minimum=0),
                method=method,
                num_groups=_int_field(c, "n_group", 1),
                topk_groups=_int_field(c, "topk_group", 1),
                norm_topk_prob=bool(c.get("norm_topk_prob", False)),
                routed_scaling_factor=float(c.get("routed_scaling_factor", 1.0)),
            )
        except ValueError as e:
            raise CheckpointError(f"config.json: {e}") from None

    @cached_property
    def rotary(self) -> RotaryEmbedding:
        c = self.config
        return RotaryEmbedding(c.rope, self.mla_spec.qk_rope_head_dim, c.max_position_embeddings)

    def is_moe_layer(self, layer_idx: int) -> bool:
        c = self.config
        first_dense = _int_field(c, "first_k_dense_replace", 0, minimum=0)
        every = _int_field(c, "moe_layer_freq", 1)
        return self.moe_spec is not None and layer_idx >= first_dense and layer_idx % every == 0

    def make_layer(self, layer_idx: int) -> nn.Module:
        c = self.config
        attn = MLAttention(self.mla_spec, self.rotary)
        mlp = MoE(self.moe_spec) if self.is_moe_layer(layer_idx) else LlamaMLP(c.hidden_size, c.intermediate_size)
        return LlamaDecoderLayer(c, attn, mlp)

    def kv_token_shapes(self) -> list[tuple[int, ...]]:
        return [(self.mla_spec.latent_dim,)]  # normalised latent + roped shared key, per token

    def checkpoint_names(self, param_name: str) -> list[str]:
        if self.moe_spec is not None:
            names = expert_checkpoint_names(param_name, self.moe_spec)
            if names is not None:
                return names
        return super().checkpoint_names(param_name)


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    """DeepSeek-V3 / R1: sigmoid routing with a score-correction bias (noaux_tc)."""

    default_topk_method = "noaux_tc"

    def rope_interleave(self) -> bool:
        return bool(self.config.get("rope_interleave", True))
