"""Fill a StageModel's parameters from a checkpoint, reading only the tensors the stage owns."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.checkpoint import CheckpointFiles, TensorReader
from engine.errors import CheckpointError
from engine.models.base import StageModel
from engine.progress import LoadProgress
from engine.random_init import fill_random_

EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
SCALE_SUFFIX = "_scale_inv"  # FP8 block scales: `<name>.weight_scale_inv` next to `<name>.weight`


@dataclass(frozen=True)
class LoadReport:
    """What a load read: how many tensors and bytes, from which files, in how long."""

    num_tensors: int
    num_bytes: int
    files: tuple[str, ...]
    seconds: float


def stage_tensors(model: StageModel) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers to fill, tied ones once (under their first name)."""
    seen, out = set(), {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor
    return out


def tie_embeddings(model: StageModel) -> None:
    """One tensor for the embedding and the LM head when the config ties them on one stage."""
    if model.config.tie_word_embeddings and model.is_first and model.is_last:
        model.lm_head.weight = model.model.embed_tokens.weight


def source_names(model: StageModel, param: str, files: CheckpointFiles | None) -> list[str]:
    """Checkpoint tensors of a parameter; a tied LM head reads the embedding."""
    names = model.checkpoint_names(param)
    tied = model.config.tie_word_embeddings and names == [LM_HEAD]
    if tied and (files is None or LM_HEAD not in files):
        return [EMBED]
    return names


def load_weights(
    model: StageModel, model_dir: str | Path, *, load_format: str = "safetensors", seed: int = 0
) -> LoadReport:
    """Fill every parameter of `model` (already on its device and dtype)."""
    tie_embeddings(model)
    targets = stage_tensors(model)
    total = sum(t.numel() * t.element_size() for t in targets.values())
    what = f"layers [{model.layer_start}, {model.layer_end}) of {Path(model_dir).name}"
    progress = LoadProgress(f"{what} ({load_format})", total)
    if load_format == "dummy":  # (stages in native FP8 mode are never dummy: see engine.stage)
        for name, target in targets.items():
            fill_random_(target, source_names(model, name, None)[0], seed)
            progress.update(target.numel() * target.element_size())
        return LoadReport(len(targets), total, (), progress.close("random values"))
    files = CheckpointFiles(model_dir)
    plan = {name: source_names(model, name, files) for name in targets}
    missing = [s for names in plan.values() for s in names if s not in files]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{files.source}: missing tensors {', '.join(missing[:5])}{more}")
    block = fp8_block(model)
    shards = getattr(model, "tp_shards", {})  # tensor parallelism: param -> (dim, start, stop)
    order = sorted(targets, key=lambda n: (files.weight_map[plan[n][0]], n))  # file by file
    with TensorReader(files) as reader:
        for name in order:
            target = targets[name]
            tensors = [_read(reader, s, block, target, shards.get(name)) for s in plan[name]]
            _copy_into(targets[name], tensors, plan[name], files)
            progress.update(targets[name].numel() * targets[name].element_size())
        opened = tuple(p.name for p in reader.opened)
    seconds = progress.close(f"{len(targets)} tensors from {len(opened)} files")
    return LoadReport(len(targets), total, opened, seconds)


def fp8_block(model: StageModel) -> tuple[int, int]:
    quant = model.config.get("quantization_config") or {}
    return tuple(quant.get("weight_block_size") or (128, 128))


def _read(reader: TensorReader, name: str, block: tuple[int, int], target: torch.Tensor,
          shard: tuple[int, int, int] | None = None):
    """A checkpoint tensor (or this rank's (dim, start, stop) share of it); FP8 ones dequantized
    on the target's device (fast on a GPU), unless the target itself is FP8 (native mode: the
    scales are parameters of their own)."""
    scale_name = name + SCALE_SUFFIX
    if scale_name not in reader.files or target.dtype == torch.float8_e4m3fn:
        return reader.get(name) if shard is None else _read_share(reader, name, shard, block, target)
    from engine.fp8 import dequantize_block_fp8  # only FP8 checkpoints need it

    if shard is None:
        return dequantize_block_fp8(reader.get(name).to(target.device),
                                    reader.get(scale_name).to(target.device), block=block)
    dim, start, stop = shard  # dequantize the scale blocks covering the share, keep the share
    first, last = start // block[dim], -(-stop // block[dim])
    weight = reader.get_slice(name, dim, first * block[dim], last * block[dim])
    scale_inv = reader.get_slice(scale_name, dim, first, last)
    full = dequantize_block_fp8(weight.to(target.device), scale_inv.to(target.device), block=block)
    return full.narrow(dim, start - first * block[dim], stop - start)


def _read_share(reader: TensorReader, name: str, shard: tuple[int, int, int],
                block: tuple[int, int], target: torch.Tensor) -> torch.Tensor:
    dim, start, stop = shard
    if target.dtype == torch.float8_e4m3fn and start % block[dim]:
        raise CheckpointError(f"{reader.files.path_of(name)}: tensor {name!r}: this rank's share "
                              f"starts at {start} on dim {dim}, not on a {block[dim]}-wide FP8 "
                              "block (native FP8 under tensor parallelism needs aligned shares)")
    return reader.get_slice(name, dim, start, stop)


@torch.no_grad()
def _copy_into(
    target: torch.Tensor, tensors: list[torch.Tensor], names: list[str], files: CheckpointFiles
) -> None:
    """Copy one tensor, or several stacked along dim 0, checking each checkpoint shape."""
    stacked = len(tensors) > 1
    expected = list(target.shape[1:] if stacked else target.shape)
    for name, tensor in zip(names, tensors):
        if list(tensor.shape) != expected:
            raise CheckpointError(
                f"{files.path_of(name)}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"expected {expected}"
            )
    if not stacked:
        target.copy_(tensors[0])
        return
    assert target.shape[0] == len(tensors), "checkpoint_names must name one tensor per row"
    for row, tensor in zip(target, tensors):
        row.copy_(tensor)
