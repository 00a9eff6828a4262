"""What a checkpoint costs before it is loaded: parameters, bytes on disk and on the GPU, KV.

Everything comes from config.json and the meta-built model (no weights are read): a stage's
parameters are the model's for its layer range, an FP8 checkpoint's linear weights are those
DeepSeek ships as e4m3 (`engine.tiny_model.FP8_WEIGHT`, or the index's `weight_scale_inv`
names when the folder has one). Native mode holds them as 1 byte + one fp32 per 128x128 block
(except MLA's kv_b_proj, kept dequantized); dequantize mode holds every weight in `dtype`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.checkpoint import INDEX_FILE
from engine.config import ModelConfig
from engine.models import model_class
from engine.tiny_model import FP8_WEIGHT
from engine.weights import SCALE_SUFFIX, stage_tensors

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
KEEP_DEQUANTIZED = (".kv_b_proj.weight",)  # see MLAttention.fp8_keep_dequantized


@dataclass(frozen=True)
class Footprint:
    """Sizes of one part of a model (a layer, the embedding, the head)."""

    params: int
    checkpoint_bytes: int  # as stored: FP8 weights 1 byte + scales, the rest bf16
    native_bytes: int  # on the GPU, fp8 = "native"
    dequantized_bytes: int  # on the GPU, every weight in the stage dtype

    def __add__(self, other: "Footprint") -> "Footprint":
        return Footprint(*(a + b for a, b in zip(self.sizes(), other.sizes())))

    def sizes(self) -> tuple[int, int, int, int]:
        return self.params, self.checkpoint_bytes, self.native_bytes, self.dequantized_bytes


ZERO = Footprint(0, 0, 0, 0)


@dataclass(frozen=True)
class ModelFootprint:
    """Per-layer footprints plus the first stage's embedding and the last stage's norm + head."""

    config: ModelConfig
    layers: list[Footprint]
    embedding: Footprint
    head: Footprint  # final norm + LM head
    kv_bytes_per_token_layer: int  # bf16 cache rows of one layer for one token
    fp8: bool

    @property
    def total(self) -> Footprint:
        return sum(self.layers, self.embedding + self.head)

    def stage(self, start: int, end: int) -> Footprint:
        """Layers [start, end), with the embedding if start == 0 and the head if end == L."""
        out = sum(self.layers[start:end], ZERO)
        if start == 0:
            out = out + self.embedding
        if end == len(self.layers):
            out = out + self.head
        return out

    def on_gpu(self, part: Footprint, native: bool) -> int:
        """GPU bytes of a part in the given mode (native only changes FP8 checkpoints)."""
        return part.native_bytes if native and self.fp8 else part.dequantized_bytes

    def gpu_bytes(self, start: int, end: int, native: bool) -> int:
        return self.on_gpu(self.stage(start, end), native)


def _scaled_names(model_dir: Path) -> set[str] | None:
    index = model_dir / INDEX_FILE
    if not index.exists():
        return None
    names = json.loads(index.read_text()).get("weight_map", {})
    return {n[: -len(SCALE_SUFFIX)] for n in names if n.endswith(SCALE_SUFFIX)}


def _tensor_footprint(name: str, shape: torch.Size, fp8: bool, dtype_bytes: int) -> Footprint:
    n = shape.numel()
    if name.endswith("e_score_correction_bias"):  # fp32 on disk and on the GPU (see Router)
        return Footprint(n, 4 * n, 4 * n, 4 * n)
    if not fp8:
        return Footprint(n, 2 * n, n * dtype_bytes, n * dtype_bytes)  # shipped in bf16
    blocks = -(-shape[-2] // 128) * -(-shape[-1] // 128) * (n // (shape[-2] * shape[-1]))
    ckpt = n + 4 * blocks
    native = n * dtype_bytes if name.endswith(KEEP_DEQUANTIZED) else ckpt
    return Footprint(n, ckpt, native, n * dtype_bytes)


def footprint(model_dir: str | Path, dtype: str = "bfloat16") -> ModelFootprint:
    """The footprint of every layer of the checkpoint in `model_dir` (config.json is enough)."""
    model_dir = Path(model_dir)
    config = ModelConfig.from_dir(model_dir)
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    fp8 = config.get("quantization_config") is not None
    scaled = _scaled_names(model_dir) if fp8 else set()
    with torch.device("meta"):
        model = model_class(config.architecture)(config, 0, config.num_hidden_layers)
    parts: dict[str, Footprint] = {}
    for name, tensor in stage_tensors(model).items():
        source = model.checkpoint_names(name)[0]
        is_fp8 = fp8 and (FP8_WEIGHT.match(source) is not None if scaled is None
                          else source in scaled)
        key = name.split(".")[2] if name.startswith("model.layers.") else (
            "embedding" if "embed_tokens" in name else "head")
        f = _tensor_footprint(source, tensor.shape, is_fp8, DTYPE_BYTES[dtype])
        parts[key] = parts.get(key, ZERO) + f
    kv = sum(torch.Size(s).numel() for s in model.kv_token_shapes()) * 2  # bf16 cache
    layers = [parts[str(i)] for i in range(config.num_hidden_layers)]
    return ModelFootprint(config, layers, parts.get("embedding", ZERO), parts.get("head", ZERO),
                          kv, fp8)


def disk_bytes(model_dir: str | Path) -> int:
    """Bytes of the folder's safetensors files (0 for a config-only folder)."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
