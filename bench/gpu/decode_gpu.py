"""Decode on one GPU, side by side in one run: the copy-bandwidth floor, the weight matmuls as
one CUDA graph (the torch ceiling), the engine in one process — eager, decode buffers without
graphs, CUDA graphs — and transformers' `generate`.

Real model shapes with dummy (seeded random) weights, bf16, all layers in one stage:
- `qwen7b`: DeepSeek-R1-Distill-Qwen-7B; `v2lite`: DeepSeek-V2-Lite (MLA + 64-expert MoE);
- `v3`: DeepSeek-V3 real dimensions, 4 layers (1 dense + 3 MoE of 256 experts).
An engine step is a real serving step: stage forward, LM head, the batched sampler (greedy),
the tokens read back to the host. Writes one JSON file; render_results.py makes results.md.

    python -m bench.gpu.decode_gpu --out results.json [--shapes qwen7b,v2lite,v3]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.gpu import ceiling, kernels
from engine.batch import SeqChunk, StepBatch
from engine.sampler import SamplerState, sample
from engine.sampling_params import SamplingParams
from engine.stage import Stage
from engine.tiny_configs import generation_config, tiny_config

_V3 = {"hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
       "num_attention_heads": 128, "num_key_value_heads": 128, "vocab_size": 129280,
       "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
       "v_head_dim": 128, "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
       "n_group": 8, "topk_group": 4, "first_k_dense_replace": 1}
SHAPES = {  # name: (arch, layers, config overrides, run transformers too)
    "tiny": ("qwen2", 2, {}, True),  # a smoke test of this script
    "qwen7b": ("qwen2", 28, {
        "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 131072,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6}, True),
    "v2lite": ("deepseek_v2", 27, {
        "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
        "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 102400,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
        "bos_token_id": 100000, "eos_token_id": 100001}, True),
    "v3": ("deepseek_v3", 4, _V3, False),  # transformers would need a second 72 GB copy
}
GREEDY = SamplingParams(temperature=0)


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def write_config(shape: str, folder: Path) -> Path:
    arch, layers, overrides, _ = SHAPES[shape]
    config = {**tiny_config(arch, layers), **overrides}
    config.pop("head_dim", None)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps(generation_config(config)))
    return folder


def engine_decode(stage: Stage, batch: int, prompt_len: int, steps: int, tag: str) -> dict:
    """Prefill `batch` prompts in one step, then `steps` greedy decode steps, each timed whole."""
    ids = torch.randint(0, stage.config.vocab_size, (batch * prompt_len,),
                        generator=torch.Generator().manual_seed(0))
    seqs = [f"{tag}{i}" for i in range(batch)]
    states = [SamplerState.create(GREEDY) for _ in seqs]
    step = StepBatch(tuple(SeqChunk(s, 0, prompt_len) for s in seqs))
    hidden = stage.forward(step, ids)[step.last_token_rows()]
    tokens = [r.token_id for r in sample(stage.compute_logits(hidden), states)]
    times, first_logits = [], None
    for n in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step = StepBatch(tuple(SeqChunk(s, prompt_len + n, 1) for s in seqs))
        logits = stage.compute_logits(stage.forward(step, torch.tensor(tokens)))
        tokens = [r.token_id for r in sample(logits, states)]  # the step's one read
        times.append(time.perf_counter() - t0)
        if first_logits is None:
            first_logits = logits.float().cpu()
    for s in seqs:
        stage.release(s)
    p50 = sorted(times)[len(times) // 2]
    return {"step_ms_p50": p50 * 1e3, "tokens_per_s": batch / p50,
            "tokens": [st.output_token_ids for st in states], "first_logits": first_logits}


def ttft_ms(stage: Stage, prompt_len: int) -> float:
    """One prompt prefilled in one step, LM head and a greedy token: median of 3."""
    ids = torch.randint(0, stage.config.vocab_size, (prompt_len,))
    times = []
    for i in range(4):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step = StepBatch((SeqChunk(f"p{i}", 0, prompt_len),))
        hidden = stage.forward(step, ids)[-1:]
        sample(stage.compute_logits(hidden), [SamplerState.create(GREEDY)])
        times.append(time.perf_counter() - t0)
        stage.release(f"p{i}")
    return sorted(times[1:])[1] * 1e3


def transformers_decode(folder: Path, prompt_len: int, steps: int) -> dict:
    """transformers' greedy generate at batch 1; decode time = (N+1 tokens) - (1 token)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (1, prompt_len), device="cuda")

    def timed(new_tokens: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(4)  # warm-up
    decode_s = timed(steps + 1) - timed(1)
    del model
    return {"step_ms": decode_s / steps * 1e3, "tokens_per_s": steps / decode_s}


def engine_variants(stage: Stage, batches: list[int], prompt_len: int, steps: int) -> dict:
    """eager (no decode buffers) and buffers-without-graphs at batch 1; graphs at every batch."""
    graphs, runs = stage.decode_graphs, {}
    for name, runner, capture in (("eager", None, False), ("buffers", graphs, False)):
        stage.decode_graphs = runner
        graphs.capture = capture
        engine_decode(stage, 1, prompt_len, 4, "w")  # warm-up
        runs[f"{name}_b1"] = engine_decode(stage, 1, prompt_len, steps, name)
    graphs.capture = True
    for b in batches:
        engine_decode(stage, b, prompt_len, 4, "w")  # captures this batch's bucket
        runs[f"graph_b{b}"] = engine_decode(stage, b, prompt_len, steps, "g")
    runs["graph_b1_ctx2000"] = engine_decode(stage, 1, 2000, steps, "l")  # a long context
    stage.decode_graphs = None
    engine_decode(stage, batches[-1], prompt_len, 4, "w")
    runs[f"eager_b{batches[-1]}"] = engine_decode(stage, batches[-1], prompt_len, steps, "e")
    runs["eager_b1_ctx2000"] = engine_decode(stage, 1, 2000, steps, "l")
    stage.decode_graphs = graphs
    return runs


def replay_ms(graphs, repeats: int = 50) -> float | None:
    """Device time of the batch-1 graph alone, replayed back to back (no host work between)."""
    if 1 not in graphs.graphs:
        return None
    graph = graphs.graphs[1][0]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def agreement(runs: dict) -> dict:
    """Graphs must give the buffers' tokens exactly (same kernels); eager uses SDPA, so its
    logits differ by bf16 rounding and greedy tokens may part after a near tie."""
    def rel(a, b):
        return float((a - b).norm() / b.norm())

    eager, buffers, graph = (runs[k] for k in ("eager_b1", "buffers_b1", "graph_b1"))
    same = 0
    while same < len(eager["tokens"][0]) and eager["tokens"][0][same] == graph["tokens"][0][same]:
        same += 1
    return {
        "graph_tokens_equal_buffers": graph["tokens"] == buffers["tokens"],
        "graph_vs_buffers_logits_rel": rel(graph["first_logits"], buffers["first_logits"]),
        "graph_vs_eager_logits_rel": rel(graph["first_logits"], eager["first_logits"]),
        "graph_eager_same_tokens_prefix": same,
    }


def bench_shape(shape: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config(shape, Path(tmp))
        stage = Stage.load(folder, 0, SHAPES[shape][1], dtype="bfloat16", device="cuda",
                           kv_cache_bytes=4 * 2**30, load_format="dummy",
                           cuda_graph_max_batch=max(args.batches))
        spec = getattr(stage.model, "moe_spec", None)
        top_k = spec.top_k if spec is not None else None
        out = {"load_s": stage.load_seconds, "layers": SHAPES[shape][1],
               "floor_bytes": ceiling.floor_bytes(stage.model, top_k),
               "weight_bytes": sum(p.numel() * p.element_size() for p in stage.model.parameters()),
               "matmuls": ceiling.matmul_graph_ms(stage.model, top_k),
               "packed_matmuls": ceiling.matmul_graph_ms(  # the products the engine runs
                   stage.model, top_k, mats=ceiling.packed_step_matrices(stage.model, top_k))}
        out["floor_ms"] = out["floor_bytes"] / args.copy_bytes_per_s * 1e3
        runs = engine_variants(stage, args.batches, args.prompt_len, args.steps)
        out["capture_error"] = stage.decode_graphs.capture_error
        out["graph_b1_replay_ms"] = replay_ms(stage.decode_graphs)
        out["agreement"] = agreement(runs)
        out["engine"] = {k: {"step_ms_p50": v["step_ms_p50"], "tokens_per_s": v["tokens_per_s"]}
                         for k, v in runs.items()}
        out["ttft_ms"] = {str(args.ttft_len): ttft_ms(stage, args.ttft_len)}
        del stage, runs
        free_memory()
        if SHAPES[shape][3] and not args.no_transformers:
            out["transformers_b1"] = transformers_decode(folder, args.prompt_len, args.steps)
            free_memory()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="qwen7b,v2lite,v3")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--ttft-len", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--no-transformers", action="store_true")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.copy_bytes_per_s = ceiling.copy_bandwidth_bytes_per_s()
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(0), "host": platform.platform(),
        "torch": torch.__version__, "dtype": "bfloat16", "prompt_len": args.prompt_len,
        "decode_steps": args.steps, "copy_bytes_per_s": args.copy_bytes_per_s,
        "kernel_rel_err": kernels.check(), "shapes": {},
    }
    print(json.dumps(results), flush=True)
    for shape in args.shapes.split(","):
        try:
            results["shapes"][shape] = bench_shape(shape, args)
        except Exception as e:  # record it and go on with the next shape
            results["shapes"][shape] = {"error": f"{type(e).__name__}: {e}"}
            free_memory()
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(json.dumps({shape: results["shapes"][shape]}), flush=True)


if __name__ == "__main__":
    main()
