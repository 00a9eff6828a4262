"""The FP8 checkpoint writer (V3 layout at any size) and the loader read each other exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.errors import CheckpointError
from engine.fp8 import dequantize_block_fp8
from engine.fp8_writer import write_fp8_checkpoint
from engine.stage import Stage

V3 = json.loads((Path(__file__).parents[1] / "fixtures" / "deepseek_v3_config.json").read_text())
# V3's config with small sizes; 200 and 320 are not multiples of 128: partial scale blocks
SMALL = {**V3, "hidden_size": 320, "moe_intermediate_size": 200, "intermediate_size": 384,
         "n_routed_experts": 16, "n_group": 4, "topk_group": 2, "q_lora_rank": 160,
         "kv_lora_rank": 64, "num_attention_heads": 4, "vocab_size": 1000,
         "num_hidden_layers": 5, "first_k_dense_replace": 2}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    return write_fp8_checkpoint(SMALL, tmp_path_factory.mktemp("fp8"), 1, 4, seed=3)


def test_layout_is_deepseeks(written):
    index = json.loads((written / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(set(index.values())) == [f"model-0000{i}-of-00005.safetensors" for i in (2, 3, 4)]
    name = "model.layers.2.mlp.experts.7.down_proj.weight"
    with safe_open(str(written / index[name]), "pt") as f:
        assert f.get_tensor(name).dtype == torch.float8_e4m3fn
        assert list(f.get_tensor(name + "_scale_inv").shape) == [3, 2]  # [320, 200] in 128-blocks
        assert f.get_tensor("model.layers.2.mlp.gate.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.2.mlp.gate.e_score_correction_bias").dtype == torch.float32
    config = json.loads((written / "config.json").read_text())
    assert config["quantization_config"]["weight_block_size"] == [128, 128]


def test_loader_reads_back_fp8_times_scale(written):
    stage = Stage.load(written, 1, 4, kv_cache_bytes=2**20)  # fp32, dequantized on the CPU
    index = json.loads((written / "model.safetensors.index.json").read_text())["weight_map"]
    checked = 0
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.3.self_attn.q_b_proj.weight"):
        with safe_open(str(written / index[name]), "pt") as f:
            want = dequantize_block_fp8(f.get_tensor(name), f.get_tensor(name + "_scale_inv"))
        assert torch.equal(stage.model.state_dict()[name], want)
        checked += 1
    experts = stage.model.model.layers["3"].mlp.experts
    with safe_open(str(written / index["model.layers.3.mlp.experts.5.up_proj.weight"]), "pt") as f:
        up = "model.layers.3.mlp.experts.5.up_proj.weight"
        want = dequantize_block_fp8(f.get_tensor(up), f.get_tensor(up + "_scale_inv"))
    assert torch.equal(experts.gate_up_proj[2 * 5 + 1], want)  # row 2e + 1: expert e's up_proj
    # the real weight has the usual 1/sqrt(fan_in) size
    assert 0.5 < want.std().item() * 320**0.5 < 2.0
    with pytest.raises(CheckpointError, match="missing tensors"):
        Stage.load(written, 0, 4, kv_cache_bytes=2**20)  # layer 0 was not written
