"""Split a model over two hosts: the layer split k, each GPU's layers, and the KV room left.

Host A (the master) runs the embedding and layers [0, k); host B (the worker) layers [k, L),
the final norm and the LM head. A decode step reads every weight of a stage once, one GPU after
another, so a stage's step time is proportional to its weight bytes: k balances the two
stages' bytes (the embedding is a lookup, so it counts only toward memory). Within a host,
contiguous layer ranges go to its GPUs in order, each near an equal share of the bytes. Every
token needs a cache row in every layer, so a host's KV capacity is its fullest GPU's.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.checkpoint_plan import ModelFootprint


@dataclass(frozen=True)
class Host:
    """A host's GPUs: how many, how many bytes each, and the bytes each keeps free."""

    gpus: int
    gpu_bytes: int
    reserve_bytes: int  # activations, CUDA context, allocator slack

    def __post_init__(self):
        if self.gpus < 1 or self.gpu_bytes <= self.reserve_bytes:
            raise ValueError(f"a host needs >= 1 GPU with more than the reserve ({self})")


@dataclass(frozen=True)
class GpuPlan:
    layers: tuple[int, int]  # [start, end)
    weight_bytes: int
    kv_tokens: int  # cache rows this GPU has room for in each of its layers


@dataclass(frozen=True)
class SplitPlan:
    k: int
    native: bool
    hosts: tuple[list[GpuPlan], list[GpuPlan]]
    step_bytes: tuple[int, int]  # bytes each stage reads per decode step

    @property
    def kv_tokens(self) -> int:
        return min(g.kv_tokens for gpus in self.hosts for g in gpus)


def _stage_costs(fp: ModelFootprint, native: bool) -> list[int]:
    return [fp.on_gpu(f, native) for f in fp.layers]


def place(fp: ModelFootprint, start: int, end: int, host: Host, native: bool) -> list[GpuPlan] | None:
    """Contiguous layer ranges of [start, end) on the host's GPUs, or None if they do not fit."""
    costs = _stage_costs(fp, native)
    extra_first = fp.on_gpu(fp.embedding, native) if start == 0 else 0  # on the first GPU
    extra_last = fp.on_gpu(fp.head, native) if end == len(costs) else 0  # on the last GPU
    total = sum(costs[start:end]) + extra_first + extra_last
    share, bounds, acc, layer = total / host.gpus, [start], extra_first, start
    for g in range(host.gpus - 1):  # cut where the running sum passes each GPU's share
        while layer < end and acc + costs[layer] / 2 <= share * (g + 1):
            acc += costs[layer]
            layer += 1
        bounds.append(layer)
    bounds.append(end)
    plans = []
    for g in range(host.gpus):
        a, b = bounds[g], bounds[g + 1]
        weights = sum(costs[a:b]) + (extra_first if g == 0 else 0)
        weights += extra_last if g == host.gpus - 1 else 0
        room = host.gpu_bytes - host.reserve_bytes - weights
        if room < 0:
            return None
        rows = room // (fp.kv_bytes_per_token_layer * (b - a)) if b > a else 10**12
        plans.append(GpuPlan((a, b), weights, int(rows)))
    return plans


def gpu_ranges(fp: ModelFootprint, start: int, end: int, host: Host, native: bool
               ) -> list[tuple[int, int]] | None:
    """The layer range each of a host's GPUs loads for stage [start, end) (None: no fit)."""
    plans = place(fp, start, end, host, native)
    return None if plans is None else [g.layers for g in plans]


def plan_split(fp: ModelFootprint, host_a: Host, host_b: Host, native: bool) -> SplitPlan:
    """The k that minimizes the slower stage's bytes among the splits that fit."""
    layers = len(fp.layers)
    costs = _stage_costs(fp, native)
    head = fp.on_gpu(fp.head, native)
    best = None
    for k in range(1, layers):
        step = (sum(costs[:k]), sum(costs[k:]) + head)
        if best is not None and max(step) >= max(best.step_bytes):
            continue
        a, b = place(fp, 0, k, host_a, native), place(fp, k, layers, host_b, native)
        if a is not None and b is not None:
            best = SplitPlan(k, native, (a, b), step)
    if best is None:
        need = fp.gpu_bytes(0, layers, native)
        have = sum(h.gpus * (h.gpu_bytes - h.reserve_bytes) for h in (host_a, host_b))
        mode = "FP8 native" if native and fp.fp8 else "dequantized"
        raise ValueError(f"the model does not fit: {mode} weights need {need / 1e9:.0f} GB, the "
                         f"two hosts have {have / 1e9:.0f} GB after the per-GPU reserve")
    return best
