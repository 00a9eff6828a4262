"""Rotary embeddings against transformers' rope functions, for every rope type a config may set."""
from __future__ import annotations

import pytest
import torch
from transformers import DeepseekV3Config, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_ds
from transformers.models.llama import modeling_llama as hf_llama

from engine.config import ModelConfig, normalize_rope
from engine.rope import RotaryEmbedding, apply_rope, apply_rope_interleaved, rope_frequencies

LLAMA = dict(hidden_size=64, num_attention_heads=4, head_dim=32, max_position_embeddings=32768)
ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "yarn": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
             "original_max_position_embeddings": 8192},
}
# DeepSeek's YaRN: the attention factor is a ratio of two mscales (V3: 1/1, V2-Lite: .707/.707)
DEEPSEEK_YARN = {
    "v3": {"mscale": 1.0, "mscale_all_dim": 1.0},
    "v2_lite": {"mscale": 0.707, "mscale_all_dim": 0.707},
    "unequal": {"mscale": 1.0, "mscale_all_dim": 0.5},
    "none": {},
}


def reference(config) -> tuple[torch.Tensor, float]:
    kind = config.rope_parameters["rope_type"]
    if kind == "default":
        return hf_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[kind](config, "cpu")


@pytest.mark.parametrize("kind", ROPES)
def test_frequencies_match_transformers(kind):
    config = LlamaConfig(**LLAMA, rope_parameters=dict(ROPES[kind]))
    want_freq, want_factor = reference(config)
    ours = ModelConfig.from_dict({**config.to_dict(), "architectures": ["LlamaForCausalLM"]})
    freq, factor = rope_frequencies(ours.rope, 32, LLAMA["max_position_embeddings"])
    torch.testing.assert_close(freq, want_freq, rtol=1e-6, atol=0)
    assert factor == pytest.approx(want_factor)


@pytest.mark.parametrize("variant", DEEPSEEK_YARN)
def test_deepseek_yarn_frequencies_and_attention_factor_match_transformers(variant):
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 32,
            "beta_slow": 1, "original_max_position_embeddings": 4096, **DEEPSEEK_YARN[variant]}
    config = DeepseekV3Config(hidden_size=64, num_attention_heads=4, qk_rope_head_dim=8,
                              max_position_embeddings=163840, rope_parameters=dict(rope))
    want_freq, want_factor = reference(config)
    freq, factor = rope_frequencies(normalize_rope({"rope_scaling": rope}), 8, 163840)
    torch.testing.assert_close(freq, want_freq, rtol=1e-6, atol=0)
    assert factor == pytest.approx(want_factor)
    if variant == "unequal":
        assert factor != pytest.approx(1.0)


def test_cos_sin_and_both_layouts_match_transformers():
    config = LlamaConfig(**LLAMA, rope_parameters=dict(ROPES["yarn"]))
    positions = torch.tensor([0, 1, 7, 4095, 20000])
    want_cos, want_sin = hf_llama.LlamaRotaryEmbedding(config)(torch.zeros(1), positions[None])
    rotary = RotaryEmbedding(normalize_rope(config.to_dict()), 32, LLAMA["max_position_embeddings"])
    cos, sin = rotary(positions, torch.float32)
    torch.testing.assert_close(cos, want_cos[0])
    torch.testing.assert_close(sin, want_sin[0])
    assert rotary(positions, torch.float32)[0] is cos  # computed once per step, reused by layers

    q, k = torch.randn(5, 4, 32), torch.randn(5, 2, 32)  # [T, heads, dim]
    as_hf = lambda x: x.transpose(0, 1)[None]  # [1, heads, T, dim]
    want_q, want_k = hf_llama.apply_rotary_pos_emb(as_hf(q), as_hf(k), want_cos, want_sin)
    torch.testing.assert_close(as_hf(apply_rope(q, cos, sin)), want_q)
    torch.testing.assert_close(as_hf(apply_rope(k, cos, sin)), want_k)
    want_q, want_k = hf_ds.apply_rotary_pos_emb_interleave(as_hf(q), as_hf(k), want_cos, want_sin)
    torch.testing.assert_close(as_hf(apply_rope_interleaved(q, cos, sin)), want_q)
    torch.testing.assert_close(as_hf(apply_rope_interleaved(k, cos, sin)), want_k)
