"""Write a random FP8 checkpoint of any DeepSeek-V3-shaped config, layer range by layer range.

Shards and index as DeepSeek ships them: linear weights float8_e4m3fn with an fp32
`weight_scale_inv` per 128x128 block, everything else bf16, one shard per decoder layer
(`model-000NN-of-000LL.safetensors`, named after the full model's layer count). Only the layers
asked for are written, so a benchmark can hold V3's real dimensions without its 700 GB.
Values are generated on `device` one tensor at a time (a V3 MoE layer is 11.5 GB).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.checkpoint import INDEX_FILE
from engine.config import ModelConfig
from engine.fp8 import FP8_DTYPE, FP8_MAX
from engine.models import model_class
from engine.random_init import fill_random_, tensor_seed
from engine.tiny_model import FP8_BLOCK, SAVE_DTYPE, FP8_WEIGHT
from engine.weights import SCALE_SUFFIX, source_names, stage_tensors

QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                       "weight_block_size": list(FP8_BLOCK)}


def layer_shapes(config: ModelConfig, layer_start: int, layer_end: int) -> dict[str, list[int]]:
    """Checkpoint name -> shape of every tensor layers [start, end) read (bf16 view)."""
    with torch.device("meta"):
        model = model_class(config.architecture)(config, layer_start, layer_end)
    out = {}
    for name, target in stage_tensors(model).items():
        names = source_names(model, name, None)
        shape = list(target.shape[1:] if len(names) > 1 else target.shape)
        out.update({n: shape for n in names})
    return out


def random_fp8(shape: list[int], name: str, seed: int, device) -> dict[str, torch.Tensor]:
    """An e4m3 weight spread over the format's range and random block scales around
    1/sqrt(fan_in)/64, so the real weight has the usual 1/sqrt(fan_in) magnitude."""
    gen = torch.Generator(device=device).manual_seed(tensor_seed(seed, name))
    q = (torch.randn(shape, generator=gen, device=device) * 64).clamp(-FP8_MAX, FP8_MAX)
    blocks = [-(-shape[0] // FP8_BLOCK[0]), -(-shape[1] // FP8_BLOCK[1])]
    jitter = torch.rand(blocks, generator=gen, device=device) + 0.5  # [0.5, 1.5)
    scale = jitter * (shape[1] ** -0.5 / 64)
    return {name: q.to(FP8_DTYPE).cpu(), name + SCALE_SUFFIX: scale.float().cpu()}


def layer_tensors(shapes: dict[str, list[int]], seed: int, device) -> dict[str, torch.Tensor]:
    out = {}
    for name, shape in shapes.items():
        if FP8_WEIGHT.match(name):
            out.update(random_fp8(shape, name, seed, device))
        else:
            value = torch.empty(shape, device=device)
            fill_random_(value, name, seed)
            keep_fp32 = name.endswith("e_score_correction_bias")
            out[name] = value.to(torch.float32 if keep_fp32 else SAVE_DTYPE).cpu()
    return out


def write_fp8_checkpoint(raw_config: dict, out: str | Path, layer_start: int, layer_end: int,
                         *, seed: int = 0, device: str = "cpu") -> Path:
    """Write config.json (with quantization_config) and the shards of layers [start, end)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = {**raw_config, "quantization_config": QUANTIZATION_CONFIG}
    config = ModelConfig.from_dict(raw)
    total_layers = config.num_hidden_layers
    weight_map, total = {}, 0
    for layer in range(layer_start, layer_end):
        shapes = layer_shapes(config, layer, layer + 1)
        tensors = layer_tensors(shapes, seed, device)
        shard = f"model-{layer + 1:05d}-of-{total_layers:05d}.safetensors"
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        weight_map.update({name: shard for name in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return out
