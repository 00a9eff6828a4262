"""Decode throughput of one engine stage on a CUDA GPU, beside transformers' `generate`.

Real model shapes with dummy (seeded random) weights, bf16, all layers in one stage:
- `qwen7b`: DeepSeek-R1-Distill-Qwen-7B's shape (15.2 GB of weights);
- `v2lite`: DeepSeek-V2-Lite's shape (MLA + 64-expert MoE, 15.7 B parameters).
Writes one JSON file; `render_results.py` turns it into results.md.

    python bench/gpu/decode_gpu.py --out results.json [--shapes qwen7b,v2lite] [--batches 1,16]
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

from engine.batch import SeqChunk, StepBatch
from engine.stage import Stage
from engine.tiny_configs import generation_config, tiny_config

COPY_BANDWIDTH_BYTES_PER_S = 3.0e12  # H100 device-to-device copy, measured (DESIGN.md)

SHAPES = {
    "tiny": ("qwen2", 2, {}),  # a smoke test of this script on the CPU
    "qwen7b": ("qwen2", 28, {
        "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 131072,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
    }),
    "v2lite": ("deepseek_v2", 27, {
        "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
        "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 102400,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
        "bos_token_id": 100000, "eos_token_id": 100001,
    }),
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_config(shape: str, folder: Path) -> Path:
    arch, layers, overrides = SHAPES[shape]
    config = {**tiny_config(arch, layers), **overrides}
    config.pop("head_dim", None)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps(generation_config(config)))
    return folder


def engine_decode(stage: Stage, batch: int, prompt_len: int, steps: int) -> dict:
    """Prefill `batch` prompts in one step, then `steps` greedy decode steps; time each step."""
    vocab = stage.config.vocab_size
    ids = torch.randint(0, vocab, (batch * prompt_len,), generator=torch.Generator().manual_seed(0))
    chunks = tuple(SeqChunk(f"s{i}", 0, prompt_len) for i in range(batch))
    step = StepBatch(chunks)
    hidden = stage.forward(step, ids)
    tokens = stage.compute_logits(hidden[step.last_token_rows()]).argmax(-1)
    times = []
    for n in range(steps):
        step = StepBatch(tuple(SeqChunk(f"s{i}", prompt_len + n, 1) for i in range(batch)))
        sync()
        t0 = time.perf_counter()
        tokens = stage.compute_logits(stage.forward(step, tokens)).argmax(-1)
        sync()
        times.append(time.perf_counter() - t0)
    for i in range(batch):
        stage.release(f"s{i}")
    times.sort()
    p50 = times[len(times) // 2]
    return {"step_ms_p50": p50 * 1e3, "tokens_per_s": batch / p50}


def transformers_decode(folder: Path, batch: int, prompt_len: int, steps: int, device: str) -> dict:
    """transformers' greedy generate on the same config; decode time = (N+1 tokens) - (1 token)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (batch, prompt_len), device=device)

    def timed(new_tokens: int) -> float:
        sync()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
        sync()
        return time.perf_counter() - t0

    timed(4)  # warm-up
    decode_s = timed(steps + 1) - timed(1)
    del model
    return {"step_ms": decode_s / steps * 1e3, "tokens_per_s": batch * steps / decode_s}


def bench_shape(shape: str, batches: list[int], prompt_len: int, steps: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_config(shape, Path(tmp))
        stage = Stage.load(folder, 0, SHAPES[shape][1], dtype="bfloat16", device=device,
                           kv_cache_bytes=2 * 2**30, load_format="dummy")
        weight_bytes = sum(p.numel() * p.element_size() for p in stage.model.parameters())
        out = {"load_s": stage.load_seconds, "weight_bytes": weight_bytes,
               "floor_step_ms_batch1": weight_bytes / COPY_BANDWIDTH_BYTES_PER_S * 1e3, "runs": []}
        engine_decode(stage, 1, prompt_len, 4)  # warm-up
        engine = {b: engine_decode(stage, b, prompt_len, steps) for b in batches}
        del stage
        free_memory()
        for b in batches:
            hf = transformers_decode(folder, b, prompt_len, steps, device)
            out["runs"].append({"batch": b, "engine": engine[b], "transformers": hf,
                                "ratio": engine[b]["tokens_per_s"] / hf["tokens_per_s"]})
            free_memory()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", default="qwen7b,v2lite")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor(),
        "host": platform.platform(), "torch": torch.__version__, "dtype": "bfloat16",
        "prompt_len": args.prompt_len, "decode_steps": args.steps, "shapes": {},
    }
    for shape in args.shapes.split(","):
        results["shapes"][shape] = bench_shape(shape, batches, args.prompt_len, args.steps, args.device)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(json.dumps({shape: results["shapes"][shape]}, indent=2), flush=True)


if __name__ == "__main__":
    main()
