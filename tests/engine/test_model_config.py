"""config.json and generation_config.json as the engine reads them."""
from __future__ import annotations

import json

import pytest

from engine.config import GenerationDefaults, ModelConfig
from engine.errors import CheckpointError

BASE = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": 2,
    "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 1000,
}


def test_defaults_and_derived_fields():
    c = ModelConfig.from_dict(BASE)
    assert (c.architecture, c.num_key_value_heads, c.head_dim) == ("Qwen2ForCausalLM", 4, 16)
    assert c.rope == {"rope_type": "default", "rope_theta": 10000.0}
    assert c.tie_word_embeddings is False and c.get("kv_lora_rank", 7) == 7


def test_transformers_4_and_5_rope_spellings_read_the_same():
    v4 = {**BASE, "rope_theta": 1e6, "max_position_embeddings": 4096,
          "rope_scaling": {"type": "yarn", "factor": 4.0, "mscale": 1.0}}
    v5 = {**BASE, "max_position_embeddings": 4096,
          "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "mscale": 1.0}}
    a, b = ModelConfig.from_dict(v4).rope, ModelConfig.from_dict(v5).rope
    assert a == b == {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "mscale": 1.0,
                      "original_max_position_embeddings": 4096}


@pytest.mark.parametrize("field, value", [("hidden_size", None), ("num_hidden_layers", 0),
                                          ("vocab_size", "big"), ("architectures", [])])
def test_bad_fields_are_named(field, value):
    with pytest.raises(CheckpointError, match=f"config.json: field '{field}'"):
        ModelConfig.from_dict({**BASE, field: value})


def test_generation_defaults_from_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": [5, 1], "temperature": 0.6, "top_p": 0.95}))
    g = GenerationDefaults.from_dir(tmp_path)
    assert (g.bos_token_id, g.eos_token_ids, g.temperature, g.top_p, g.top_k) == (0, (5, 1), 0.6, 0.95, None)


def test_generation_defaults_fall_back_to_config_ids(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**BASE, "bos_token_id": 3, "eos_token_id": 4}))
    g = GenerationDefaults.from_dir(tmp_path)
    assert (g.bos_token_id, g.eos_token_ids, g.temperature) == (3, (4,), None)
