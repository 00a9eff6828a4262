"""What any torch engine could reach on this GPU for a stage: the copy-bandwidth floor and the
weight matmuls of one decode step replayed as one CUDA graph (the torch ceiling).

The bytes a decode step must read: every matrix the step multiplies by, once — attention and
dense MLPs, the LM head, and of each MoE layer the router, the shared experts and the `top_k`
routed experts one token uses (batch 1); the embedding contributes one row.
"""
from __future__ import annotations

import torch


def copy_bandwidth_bytes_per_s(size_bytes: int = 4 * 2**30, repeats: int = 20) -> float:
    """Device-to-device copy, counting bytes read plus written; median of `repeats`."""
    src = torch.randn(size_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * size_bytes / sorted(times[3:])[len(times[3:]) // 2]


def step_matrices(model, top_k: int | None) -> list[torch.Tensor]:
    """The [out, in] matrices one batch-1 decode step multiplies by (experts: top_k of each layer)."""
    mats = []
    for name, p in model.named_parameters():
        if "embed_tokens" in name or p.dim() < 2:
            continue
        if name.endswith("experts.gate_up_proj"):  # [2E, I, H]: rows 2e, 2e+1 are expert e
            mats += [p[i] for i in range(2 * top_k)]
        elif name.endswith("experts.down_proj"):  # [E, H, I]
            mats += [p[e] for e in range(top_k)]
        else:
            mats.append(p)
    return mats


def packed_step_matrices(model, top_k: int | None) -> list[torch.Tensor]:
    """step_matrices with each packed sibling group (engine/packed_linear.py) as its one
    matrix: what the engine multiplies by."""
    packs = [v.weight for m in model.modules() for k, v in vars(m).items() if k.startswith("packed_")]
    storages = {w.untyped_storage().data_ptr() for w in packs}
    rest = [m for m in step_matrices(model, top_k) if m.untyped_storage().data_ptr() not in storages]
    return packs + rest


def floor_bytes(model, top_k: int | None) -> int:
    """Bytes of weights a batch-1 decode step reads (one embedding row included)."""
    total = sum(m.numel() * m.element_size() for m in step_matrices(model, top_k))
    embed = getattr(model.model, "embed_tokens", None)
    return total + (embed.weight[0].numel() * embed.weight.element_size() if embed is not None else 0)


def matmul_graph_ms(model, top_k: int | None, batch: int = 1, repeats: int = 50,
                    mats: list[torch.Tensor] | None = None) -> dict:
    """The step's matrices (or `mats`) as x @ W^T, one after another, eager and as one graph."""
    mats = step_matrices(model, top_k) if mats is None else mats
    dtype = mats[0].dtype
    inputs = {m.shape[1]: torch.randn(batch, m.shape[1], device="cuda", dtype=dtype) for m in mats}

    def run() -> None:
        for m in mats:
            torch.nn.functional.linear(inputs[m.shape[1]], m)

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats

    eager = timed(run)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graphed = timed(graph.replay)
    del graph
    return {"eager_ms": eager, "graph_ms": graphed, "matrices": len(mats)}
