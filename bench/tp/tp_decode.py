"""Decode throughput of one stage under tensor parallelism, TP 1/2/4/8 side by side in one run.

Each TP size is the engine as served: this process is rank 0 and starts the others
(engine/rank_launcher.py, one GPU each, NCCL with NVLink multicast off), seeded dummy weights
in the real model shapes of bench/gpu/decode_gpu.py, all layers in one stage:
- `qwen7b`: the R1-Distill-Qwen-7B shape (28 heads, 4 KV heads: TP 8 does not divide them,
  and is recorded as skipped, as vLLM refuses it too);
- `v3`: DeepSeek-V3 real dimensions, `--v3-layers` layers (1 dense + MoE), extrapolated to
  61 layers by the MoE layers' share (bf16 dummy weights; FP8 needs `--model-dir` of an FP8
  checkpoint, as dummy weights never load in native FP8);
- `tiny`: a 2-layer qwen2, to check this script on a CPU (gloo ranks).
A step is a serving step: stage forward, LM head (its vocab shards all-gathered), greedy
argmax read back to the host. Reports batch-1 and batch-64 tok/s and the scaling efficiency
tok/s(TP n) / (n x tok/s(TP 1)) at batch 64.

    python -m bench.tp.tp_decode --out results.json [--shapes qwen7b,v3] [--tp 1,2,4,8]
    python -m bench.tp.tp_decode --out /tmp/tp.json --shapes tiny --tp 1,2 --device cpu
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.gpu.decode_gpu import SHAPES, write_config
from engine.batch import SeqChunk, StepBatch
from engine.config import ModelConfig
from engine.rank_launcher import RankLauncher
from engine.sharding import check_divisible
from engine.stage import Stage

V3_TOTAL_LAYERS = 61


def decode_rate(stage: Stage, batch: int, prompt_len: int, steps: int) -> dict:
    """Prefill `batch` prompts, then `steps` greedy decode steps timed one by one (median)."""
    sync = torch.cuda.synchronize if stage.device.type == "cuda" else (lambda: None)
    seqs = [f"b{batch}s{i}" for i in range(batch)]
    ids = torch.randint(0, stage.config.vocab_size, (batch * prompt_len,),
                        generator=torch.Generator().manual_seed(0))
    step = StepBatch(tuple(SeqChunk(s, 0, prompt_len) for s in seqs))
    hidden = stage.forward(step, ids)[step.last_token_rows()]
    tokens = stage.compute_logits(hidden).argmax(-1).tolist()
    times = []
    for n in range(steps):
        sync()
        t0 = time.perf_counter()
        step = StepBatch(tuple(SeqChunk(s, prompt_len + n, 1) for s in seqs))
        tokens = stage.compute_logits(stage.forward(step, torch.tensor(tokens))).argmax(-1).tolist()
        times.append(time.perf_counter() - t0)
    for s in seqs:
        stage.release(s)
    p50 = sorted(times)[len(times) // 2]
    return {"step_ms_p50": p50 * 1e3, "tok_s": batch / p50}


def load(folder: Path, layers: int, tp: int, args, launcher: RankLauncher | None) -> Stage:
    kwargs = dict(dtype=args.dtype, device=args.device, kv_cache_bytes=args.kv_cache_bytes,
                  load_format="safetensors" if args.model_dir else "dummy")
    if tp == 1:  # one GPU ("cuda" alone would spread the layers over all of them)
        kwargs["device"] = "cuda:0" if args.device == "cuda" else args.device
        return Stage.load(folder, 0, layers, **kwargs)
    return launcher.load(folder, 0, layers, **kwargs)


def run_shape(shape: str, args) -> dict:
    """Every TP size of one shape; a size that does not divide the model is recorded, skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model_dir) if args.model_dir else write_config(shape, Path(tmp))
        config = ModelConfig.from_dir(folder)
        layers = min(args.v3_layers, config.num_hidden_layers) if shape == "v3" else config.num_hidden_layers
        out = {"layers": layers, "tp": {}}
        for tp in args.tp:
            try:
                check_divisible(config, tp)
            except ValueError as e:
                out["tp"][tp] = {"skipped": str(e)}
                continue
            launcher = RankLauncher(tp, args.device) if tp > 1 else None
            try:
                stage = load(folder, layers, tp, args, launcher)
                out["tp"][tp] = {str(b): decode_rate(stage, b, args.prompt_tokens, args.steps)
                                 for b in args.batches}
                del stage
            finally:
                if launcher is not None:
                    launcher.stop()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            print(json.dumps({shape: {tp: out["tp"][tp]}}), flush=True)
        out["summary"] = summarize(out["tp"], args.batches)
        if shape == "v3":
            out["extrapolated_61_layers"] = extrapolate_v3(out["tp"], layers)
        return out


def summarize(by_tp: dict, batches: list[int]) -> dict:
    """Speed-up over TP 1 at each batch, and scaling efficiency at the largest batch."""
    base = by_tp.get(1, {})
    top = str(max(batches))
    out = {}
    for tp, rates in by_tp.items():
        if "skipped" in rates or "skipped" in base or not base:
            continue
        row = {f"speedup_b{b}": rates[str(b)]["tok_s"] / base[str(b)]["tok_s"] for b in batches}
        row[f"efficiency_b{top}"] = rates[top]["tok_s"] / (tp * base[top]["tok_s"])
        out[tp] = row
    return out


def extrapolate_v3(by_tp: dict, layers: int) -> dict:
    """Batch-1 tok/s of the 61-layer model from the measured step's time per layer (the
    embedding and LM head counted in; 1 dense layer of 4 measured against 3 of 61 real: MoE
    layers cost more, so this leans optimistic by a few percent)."""
    out = {}
    for tp, rates in by_tp.items():
        if "skipped" in rates or "1" not in rates:
            continue
        per_layer_ms = rates["1"]["step_ms_p50"] / layers
        out[tp] = {"batch1_tok_s": 1e3 / (per_layer_ms * V3_TOTAL_LAYERS)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default="qwen7b,v3")
    p.add_argument("--tp", default="1,2,4,8")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--v3-layers", type=int, default=4)
    p.add_argument("--kv-cache-bytes", type=int, default=4 * 2**30)
    p.add_argument("--model-dir", default="", help="a real (e.g. FP8) checkpoint instead of dummy")
    args = p.parse_args()
    args.tp = [int(x) for x in args.tp.split(",")]
    args.batches = [int(x) for x in args.batches.split(",")]
    if args.device == "cpu":
        torch.set_num_threads(1)
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": torch.cuda.get_device_name(0) if gpus else platform.processor() or "cpu",
               "gpus": gpus, "torch": torch.__version__, "dtype": args.dtype, "shapes": {}}
    for shape in args.shapes.split(","):
        results["shapes"][shape] = run_shape(shape, args)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
