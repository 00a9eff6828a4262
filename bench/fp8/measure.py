"""The measurements of bench_fp8.py, one function each (CUDA only)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.batch import SeqChunk, StepBatch
from engine.fp8 import dequantize_block_fp8, quantize_block_fp8
from engine.fp8_gemm import fp8_matmul, quantize_activations, reference_fp8_matmul

H = 7168
DEVICE = "cuda"  # a CPU smoke test of the stage-level functions sets "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def events_ms(fn, reps: int = 20) -> float:
    """Median ms of fn() timed with CUDA events after 3 warm-ups."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_rate() -> float:
    """Device-to-device copy, bytes read + written per second (the floor's denominator)."""
    src = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = events_ms(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms / 1e3)


def profile_decode(stage, batch: int = 1) -> str:
    """The top host-side costs of one eager decode step (why eager steps are slow)."""
    from torch.profiler import ProfilerActivity, profile

    seqs = [f"q{i}" for i in range(batch)]
    h = stage.config.hidden_size
    stage.forward(StepBatch(tuple(SeqChunk(s, 0, 8) for s in seqs)), hidden_states(batch * 8, 6, h))
    stage.forward(StepBatch(tuple(SeqChunk(s, 8, 1) for s in seqs)), hidden_states(batch, 7, h))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        stage.forward(StepBatch(tuple(SeqChunk(s, 9, 1) for s in seqs)), hidden_states(batch, 8, h))
        sync()
    for s in seqs:
        stage.release(s)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def checkpoint_layer_bytes(folder: Path, layer: int) -> int:
    return sum(p.stat().st_size for p in folder.glob(f"model-{layer + 1:05d}-of-*.safetensors"))


def layer_bytes(stage) -> dict:
    """Bytes of the first layer: everything but the expert stacks, and one expert slot."""
    layer = stage.model.model.layers[str(stage.layer_start)]
    experts = layer.mlp.experts
    expert_bytes = sum(p.numel() * p.element_size() for p in experts.parameters())
    total = sum(p.numel() * p.element_size() for p in layer.parameters())
    return {"dense": total - expert_bytes, "per_slot": expert_bytes / experts.num_slots,
            "slots": experts.num_slots}


def experts_used(stage, batch: int) -> int:
    """Distinct routed experts the first layer's router picks for `batch` random tokens."""
    layer = stage.model.model.layers[str(stage.layer_start)]
    x = hidden_states(batch, 5, stage.config.hidden_size)
    with torch.inference_mode():
        _, ids = layer.mlp.gate(layer.post_attention_layernorm(x))
    return int(ids.unique().numel())


def hidden_states(t: int, seed: int, h: int = H) -> torch.Tensor:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(t, h, generator=gen, device=DEVICE).bfloat16()


def decode_ms(stage, batch: int, context: int = 32, steps: int = 8) -> float:
    """Median engine step time (ms) of `batch` decodes after a `context`-token prefill."""
    seqs = [f"d{batch}_{i}" for i in range(batch)]
    stage.forward(StepBatch(tuple(SeqChunk(s, 0, context) for s in seqs)), hidden_states(batch * context, 1, stage.config.hidden_size))
    times = []
    for n in range(steps + 3):
        step = StepBatch(tuple(SeqChunk(s, context + n, 1) for s in seqs))
        x = hidden_states(batch, 2 + n, stage.config.hidden_size)
        sync()
        t0 = time.perf_counter()
        stage.forward(step, x)
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    for s in seqs:
        stage.release(s)
    return statistics.median(times[3:])


def layer_step(stage, batch: int, context: int = 32) -> tuple[dict, object]:
    """The first layer's decode step and its MoE block as callables on fixed inputs (after a
    `context`-token prefill), and the function that releases their sequences."""
    seqs = [f"g{batch}_{i}" for i in range(batch)]
    stage.forward(StepBatch(tuple(SeqChunk(s, 0, context) for s in seqs)), hidden_states(batch * context, 3, stage.config.hidden_size))
    step = StepBatch(tuple(SeqChunk(s, context, 1) for s in seqs))
    stage.kv.reserve_all((c.seq_id, c.end_pos) for c in step.chunks)
    ctx = stage.kv.build_context(step)
    idx = stage.layer_start
    layer, kv = stage.model.model.layers[str(idx)], stage.kv.layers[idx]
    x = hidden_states(batch, 4, stage.config.hidden_size)
    runs = {"layer_ms": lambda: layer(x, ctx, kv),
            "moe_ms": lambda: layer.mlp(layer.post_attention_layernorm(x))}
    return runs, lambda: [stage.release(s) for s in seqs]


def graph_layer_ms(stage, batch: int, context: int = 32) -> dict:
    """One decoder layer's decode step and its MoE block, each replayed as a CUDA graph."""
    runs, release = layer_step(stage, batch, context)
    out = {}
    with torch.inference_mode():
        for name, fn in runs.items():
            try:
                out[name] = graph_ms(fn)
            except Exception as e:  # noqa: BLE001 - recorded: the forward is not capturable
                out[name] = f"{type(e).__name__}: {str(e)[:160]}"
    release()
    return out


def old_vs_new_ms(stage, batches=(1, 4), rounds: int = 3) -> dict:
    """Version 5 ("old": the router GEMV's 4 x 512 tile, pairs mode autotuned over the dense
    configs) against version 6 (the short-matrix tile, pairs mode's shallower pipelines), the
    layer's graph replay alternating old, new, old, new... in this process: {batch: {old: [ms],
    new: [ms]}}. Both switches act at <= 4 tokens only (engine/moe_gemv.MAX_TOKENS)."""
    from engine import fp8_kernels, router_select

    out = {}
    for b in batches:
        out[b] = {"old": [], "new": []}
        for _ in range(rounds):
            for name, new in (("old", False), ("new", True)):
                router_select.SHORT_TILE = fp8_kernels.PAIRS_OWN_CONFIGS = new
                out[b][name].append(graph_layer_ms(stage, b)["layer_ms"])
    router_select.SHORT_TILE = fp8_kernels.PAIRS_OWN_CONFIGS = True
    return out


def capture(fn) -> torch.cuda.CUDAGraph:
    """fn captured as a CUDA graph after two warm-up calls on a side stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_ms(fn) -> float:
    return events_ms(capture(fn).replay, reps=30)


def prefill(stage, tokens: int) -> dict:
    """One prompt of `tokens` tokens in one step (after a warm-up prompt)."""
    times = []
    for i in range(3):
        seq = f"p{i}"
        step = StepBatch((SeqChunk(seq, 0, tokens),))
        x = hidden_states(tokens, 10 + i, stage.config.hidden_size)
        sync()
        t0 = time.perf_counter()
        stage.forward(step, x)
        sync()
        times.append(time.perf_counter() - t0)
        stage.release(seq)
    seconds = min(times[1:])
    return {"ms": 1e3 * seconds, "tok_per_s": tokens / seconds}
