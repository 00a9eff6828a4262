"""Write a tiny random-weight checkpoint in the Hugging Face layout, byte for byte reproducible.

Sharded safetensors (one shard per decoder layer; embedding with the first, head with the
last) + index, config.json, generation_config.json and a real tokenizer with chat template.
"""
from __future__ import annotations

import importlib.resources
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.checkpoint import INDEX_FILE
from engine.config import ModelConfig
from engine.materialize import to_empty
from engine.models import model_class
from engine.random_init import fill_random_
from engine.tiny_configs import TOKENIZER_PACKAGE, generation_config, tiny_config
from engine.weights import SCALE_SUFFIX, source_names, stage_tensors

SAVE_DTYPE = torch.bfloat16  # what DeepSeek, Qwen2 and Llama checkpoints ship
FP8_BLOCK = (128, 128)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
# Linear weights DeepSeek-V3 ships in FP8 (not the router `mlp.gate`, norms or embeddings).
FP8_WEIGHT = re.compile(r"^model\.layers\.\d+\..*_proj(_with_mqa)?\.weight$")


def write_tiny_model(arch: str, out: str | Path, *, seed: int = 0, num_layers: int = 4,
                     fp8: bool = False, tokenizer: bool = True) -> Path:
    """Write the checkpoint into `out` (created; existing files there are overwritten).

    tokenizer=False leaves the tokenizer files out (the engine alone needs none; the GPU
    machines lack the tokenizer packages)."""
    if num_layers < 2:
        raise ValueError(
            f"num_layers must be >= 2 (one shard per layer, at least two), got {num_layers}"
        )
    if fp8 and arch != "deepseek_v3":
        raise ValueError(f"--fp8 is for deepseek_v3 only (it ships FP8 weights), not {arch}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = tiny_config(arch, num_layers)
    if fp8:
        raw["quantization_config"] = {
            "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
            "weight_block_size": list(FP8_BLOCK),
        }
    tensors = random_tensors(ModelConfig.from_dict(raw), seed)
    if fp8:
        tensors = quantize_fp8(tensors)
    write_shards(tensors, out, num_layers)
    _write_json(out / "config.json", raw)
    _write_json(out / "generation_config.json", generation_config(raw))
    if tokenizer:
        copy_tokenizer(TOKENIZER_PACKAGE[arch], out)
    return out


def random_tensors(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Checkpoint name -> seeded random tensor in SAVE_DTYPE, for every layer."""
    with torch.device("meta"):
        model = model_class(config.architecture)(config, 0, config.num_hidden_layers)
    to_empty(model, torch.device("cpu"))
    out = {}
    for name, target in stage_tensors(model).items():
        names = source_names(model, name, None)
        fill_random_(target, names[0], seed)
        rows = [target] if len(names) == 1 else list(target.unbind(0))  # stacked experts
        for src, value in zip(names, rows):
            out[src] = value.detach().to(SAVE_DTYPE).contiguous()
    return out


def quantize_fp8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FP8 e4m3 linear weights with 128x128 `weight_scale_inv`, as DeepSeek-V3 ships."""
    from engine.fp8 import quantize_block_fp8

    out = {}
    for name, value in tensors.items():
        if FP8_WEIGHT.match(name):
            out[name], out[name + SCALE_SUFFIX] = quantize_block_fp8(value.float(), FP8_BLOCK)
        else:
            out[name] = value
    return out


def write_shards(tensors: dict[str, torch.Tensor], out: Path, num_layers: int) -> None:
    """One shard per layer: embedding joins layer 0's, everything else the last layer's."""
    shard_of = {}
    for name in tensors:
        m = _LAYER.match(name)
        layer = int(m.group(1)) if m else (0 if "embed_tokens" in name else num_layers - 1)
        shard_of[name] = f"model-{layer + 1:05d}-of-{num_layers:05d}.safetensors"
    for shard in sorted(set(shard_of.values())):
        part = {n: tensors[n] for n in sorted(tensors) if shard_of[n] == shard}
        save_file(part, str(out / shard), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(shard_of.items()))}
    _write_json(out / INDEX_FILE, index)


def copy_tokenizer(package: str, out: Path) -> None:
    """The tokenizer files the package ships (tokenizer.json, tokenizer_config.json, ...)."""
    root = importlib.resources.files(package)
    folder = root / "assets" if (root / "assets").is_dir() else root
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.is_file() and item.name.endswith((".json", ".txt")):
            with importlib.resources.as_file(item) as path:
                shutil.copyfile(path, out / item.name)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
