"""Which device runs which layer: one device, or a host's GPUs split by contiguous layer ranges.

Only layer-wise splitting for now; tensor parallelism would replace `layer_devices` and shard
the Linear layers, leaving the Stage API as it is.
"""
from __future__ import annotations

import dataclasses

import torch

from engine.batch import ForwardContext
from engine.checkpoint_plan import footprint
from engine.materialize import to_empty
from engine.models.base import LayerKV, StageModel
from engine.split_plan import Host, gpu_ranges

PLAN_RESERVE_BYTES = 4 * 10**9  # per GPU, for activations and the CUDA context (`duet checkpoint plan`'s --reserve-gb)


def layer_devices(layer_start: int, layer_end: int, device: str,
                  ranges: list[tuple[int, int]] | None = None) -> dict[int, torch.device]:
    """"cuda" with several GPUs: GPU g runs layers ranges[g] (the split planner's per-GPU
    placement, engine/split_plan.py), else equal contiguous shares; anything else: one device."""
    layers = list(range(layer_start, layer_end))
    dev = _checked_device(device)
    if device != "cuda" or torch.cuda.device_count() <= 1:
        return {i: dev for i in layers}
    if ranges is not None:
        return devices_for_ranges(ranges)
    gpus = torch.cuda.device_count()
    per_gpu = -(-len(layers) // gpus)
    return {i: torch.device("cuda", k // per_gpu) for k, i in enumerate(layers)}


def devices_for_ranges(ranges: list[tuple[int, int]]) -> dict[int, torch.device]:
    """[(start, end) per GPU, contiguous] -> layer -> cuda:g."""
    return {i: torch.device("cuda", g) for g, (a, b) in enumerate(ranges) for i in range(a, b)}


def planned_ranges(model_dir, layer_start: int, layer_end: int, device: str, dtype: str,
                   fp8: str) -> list[tuple[int, int]] | None:
    """The split planner's layer range per GPU on a host of several (engine/split_plan.py:
    near-equal bytes per GPU, the embedding and head counted where they live); None elsewhere."""
    gpus = torch.cuda.device_count() if device == "cuda" and torch.cuda.is_available() else 0
    if gpus <= 1:
        return None
    smallest = min(torch.cuda.get_device_properties(g).total_memory for g in range(gpus))
    native = fp8 == "native" and torch.cuda.get_device_capability(0) >= (8, 9)
    host = Host(gpus, smallest, PLAN_RESERVE_BYTES)
    return gpu_ranges(footprint(model_dir, dtype), layer_start, layer_end, host, native)


def _checked_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index or 0) >= count:
            raise ValueError(f"device {device!r}: this host has {count} CUDA devices")
    elif dev.type != "cpu":
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    return dev


def place(model: StageModel, devices: dict[int, torch.device], dtype: torch.dtype) -> StageModel:
    """Materialize a meta-built model: embedding with the first layer, head with the last."""
    first, last = devices[model.layer_start], devices[model.layer_end - 1]
    model.to(dtype)
    if len(set(devices.values())) == 1:
        return to_empty(model, first)
    if model.is_first:
        to_empty(model.model.embed_tokens, first)
    for idx, layer in model.model.layers.items():
        to_empty(layer, devices[int(idx)])
    if model.is_last:
        to_empty(model.model.norm, last)
        to_empty(model.lm_head, last)
    for module in model.modules():  # anything an architecture adds outside those: first device
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(t.is_meta for t in tensors):
            to_empty(module, first, recurse=False)
    return model


def context_on(ctx: ForwardContext, device: torch.device) -> ForwardContext:
    """The same step's context with its tensors on another device (layout and parts rebuilt
    there)."""
    return dataclasses.replace(
        ctx,
        positions=ctx.positions.to(device),
        slot_mapping=ctx.slot_mapping.to(device),
        context_slots=ctx.context_slots.to(device),
        context_mask=ctx.context_mask.to(device),
        layout=None,
        parts=None,
    )


def forward_spread(
    model: StageModel,
    inputs: torch.Tensor,
    ctx: ForwardContext,
    kv: dict[int, LayerKV],
    devices: dict[int, torch.device],
) -> torch.Tensor:
    """StageModel.forward with the hidden state following its layers across devices."""
    hidden = model.model.embed_tokens(inputs) if model.is_first else inputs
    contexts = {ctx.positions.device: ctx}
    for idx, layer in model.model.layers.items():
        dev = devices[int(idx)]
        if dev not in contexts:
            contexts[dev] = context_on(ctx, dev)
        hidden = layer(hidden.to(dev), contexts[dev], kv[int(idx)])
    return hidden
