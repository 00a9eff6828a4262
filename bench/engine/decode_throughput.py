"""Decode tokens/s of the engine's Stage and of transformers' `generate`, side by side, on one
DeepSeek-V3-shaped random checkpoint (MLA, 1 dense + MoE layers, noaux_tc routing).

    python bench/engine/decode_throughput.py --dtype float32 --out bench/engine/results.md

Both run greedy, in one process, on the same checkpoint, dtype and torch thread count, each
model loaded once and warmed up. Decode tokens/s = batch * (new_tokens - 1) / (time of the
whole generation - time of its prefill step); runs of the two alternate, the median is kept.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from engine.batch import SeqChunk, StepBatch
from engine.config import ModelConfig
from engine.stage import Stage
from engine.tiny_configs import tiny_config
from engine.tiny_model import random_tensors, write_shards

# DeepSeek-V3's proportions (MLA ranks, 1 shared + top-k of many routed experts, grouped
# routing), scaled down to a few hundred MB.
BENCH_FIELDS = {
    "hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 16,
    "q_lora_rank": 384, "kv_lora_rank": 256, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32,
    "v_head_dim": 64, "n_routed_experts": 32, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
    "moe_intermediate_size": 256, "n_shared_experts": 1, "first_k_dense_replace": 1,
    # V3's LM head is 2.5% of its active parameters; 16384 x 1024 is still a quarter of them here
    "vocab_size": 16384,
}
NUM_LAYERS = 4


def write_checkpoint(out: Path, seed: int = 0) -> Path:
    raw = {**tiny_config("deepseek_v3", NUM_LAYERS), **BENCH_FIELDS}
    write_shards(random_tensors(ModelConfig.from_dict(raw), seed), out, NUM_LAYERS)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    return out


def engine_generate(stage: Stage, prompts: torch.Tensor, new_tokens: int, tag: str) -> tuple[float, list]:
    """(decode seconds, generated ids [B][new_tokens]); the sequences are released after."""
    b, p = prompts.shape
    ids = [f"{tag}-{i}" for i in range(b)]
    batch = StepBatch(tuple(SeqChunk(s, 0, p) for s in ids))
    hidden = stage.forward(batch, prompts.flatten())
    tokens = stage.compute_logits(hidden[batch.last_token_rows()]).argmax(-1)  # [B]
    out = [tokens]
    started = time.perf_counter()
    for step in range(new_tokens - 1):
        batch = StepBatch(tuple(SeqChunk(s, p + step, 1) for s in ids))
        tokens = stage.compute_logits(stage.forward(batch, tokens)).argmax(-1)
        out.append(tokens)
    if tokens.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    for s in ids:
        stage.release(s)
    return seconds, torch.stack(out, dim=1).tolist()


def hf_generate(model, prompts: torch.Tensor, new_tokens: int) -> tuple[float, list]:
    """(decode seconds, generated ids) of transformers' generate: full run minus a 1-token run."""
    def generate(n: int):
        started = time.perf_counter()
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, top_p=None, temperature=None, pad_token_id=0)
        return time.perf_counter() - started, out[:, prompts.shape[1]:]

    prefill, _ = generate(1)
    total, out = generate(new_tokens)
    return total - prefill, out.tolist()


def measure(stage: Stage, hf, batch: int, prompt_tokens: int, args) -> tuple:
    """(batch, prompt, engine tok/s, transformers tok/s, share of equal greedy tokens)."""
    prompts = torch.randint(0, BENCH_FIELDS["vocab_size"], (batch, prompt_tokens),
                            generator=torch.Generator().manual_seed(batch * 1000 + prompt_tokens))
    prompts = prompts.to(args.device)
    ours, theirs = [], []
    for r in range(args.repeats):  # alternating, so that load on the shared host hits both
        seconds, ours_ids = engine_generate(stage, prompts, args.new_tokens, f"r{r}")
        ours.append(seconds)
        seconds, hf_ids = hf_generate(hf, prompts, args.new_tokens)
        theirs.append(seconds)
    tokens = batch * (args.new_tokens - 1)
    same = sum(x == y for r, s in zip(ours_ids, hf_ids) for x, y in zip(r, s)) / (batch * args.new_tokens)
    row = (batch, prompt_tokens, tokens / statistics.median(ours), tokens / statistics.median(theirs), same)
    print(f"batch {batch}, prompt {prompt_tokens}: engine {row[2]:.1f} tok/s, transformers {row[3]:.1f} "
          f"tok/s, ratio {row[2] / row[3]:.2f}x, same tokens {same:.0%}", flush=True)
    return row


def batch1_weight_bytes(stage: Stage) -> int:
    """Weight bytes one batch-1 decode step must read: all but the embedding, k/E of the experts."""
    spec = stage.model.moe_spec
    total = 0
    for name, p in stage.model.named_parameters():
        share = spec.top_k / spec.num_experts if ".experts." in name else 1.0
        total += 0 if "embed_tokens" in name else int(p.numel() * p.element_size() * share)
    return total


def stream_bandwidth() -> float:
    """Bytes/s of one pass over 512 MiB (the batch-1 floor is weight bytes / this)."""
    big = torch.ones(2**27)
    big.sum()
    started = time.perf_counter()
    for _ in range(3):
        big.sum()
    return 3 * big.numel() * 4 / (time.perf_counter() - started)


def machine(device: str) -> dict:
    import transformers

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "unknown")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "uname -a": subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "load average at start (shared host)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="append the results (markdown) to this file")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt-tokens", default="32,512", help="prompt lengths, comma-separated")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is kept")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from transformers import AutoModelForCausalLM

    info = machine(args.device)
    with tempfile.TemporaryDirectory(prefix="duet-bench-") as tmp:
        model_dir = write_checkpoint(Path(tmp))
        size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        stage = Stage.load(model_dir, 0, NUM_LAYERS, dtype=args.dtype, kv_cache_bytes=512 * 2**20,
                           device=args.device)
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
        hf = hf.to(args.device).eval()
        warm = torch.zeros(1, 8, dtype=torch.long, device=args.device)
        engine_generate(stage, warm, 4, "warm"), hf_generate(hf, warm, 4)
        floor = {"weight bytes": batch1_weight_bytes(stage),
                 "stream bytes/s": stream_bandwidth() if args.device == "cpu" else None}
        rows = [measure(stage, hf, b, p, args)
                for p in (int(x) for x in args.prompt_tokens.split(","))
                for b in (int(x) for x in args.batches.split(","))]
    report = render(info, args, size, hf.config._experts_implementation, floor, rows)
    print(report)
    if args.out:
        with args.out.open("a") as f:
            f.write(report)


def render(info: dict, args, size_bytes: int, hf_experts: str, floor: dict, rows: list) -> str:
    where = f"{args.threads} torch thread(s)" if args.device == "cpu" else info["device"]
    lines = [f"## {args.dtype}, {where}", ""]
    lines += [f"- {k}: `{v}`" for k, v in info.items()]
    lines += [
        f"- checkpoint: DeepSeek-V3-shaped, {NUM_LAYERS} layers (1 dense + {NUM_LAYERS - 1} MoE), "
        f"{size_bytes / 2**20:.0f} MiB of bf16 safetensors; fields over the tiny V3 config: "
        f"`{json.dumps(BENCH_FIELDS)}`",
        f"- run: greedy, {args.new_tokens} new tokens, median of {args.repeats} alternating runs; "
        f"transformers: experts `{hf_experts}`, attention `sdpa`, DynamicCache",
        _floor_line(floor, rows),
        f"- command: `python bench/engine/decode_throughput.py --device {args.device} --dtype {args.dtype} "
        f"--threads {args.threads} "
        f"--prompt-tokens {args.prompt_tokens} --batches {args.batches} --new-tokens {args.new_tokens} "
        f"--repeats {args.repeats}`",
        "",
        "| batch | prompt tokens | engine decode tok/s | transformers decode tok/s | engine / transformers "
        "| same greedy tokens |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {b} | {p} | {e:.1f} | {h:.1f} | {e / h:.2f}x | {s:.0%} |" for b, p, e, h, s in rows]
    return "\n".join(lines) + "\n\n"


def _floor_line(floor: dict, rows: list) -> str:
    """How close batch 1 runs to reading its weights at memory speed."""
    mib = floor["weight bytes"] / 2**20
    share = f"{BENCH_FIELDS['num_experts_per_tok']}/{BENCH_FIELDS['n_routed_experts']}"
    line = f"- a batch-1 decode step reads {mib:.0f} MiB of weights (all but the embedding, {share} of the experts)"
    batch1 = [e for b, _, e, _, _ in rows if b == 1]
    if floor["stream bytes/s"] is None or not batch1:
        return line
    rate = floor["weight bytes"] * max(batch1) / 1e9
    return (f"{line}; at its best batch-1 rate the engine reads them at {rate:.1f} GB/s; one "
            f"streaming pass over 512 MiB runs at {floor['stream bytes/s'] / 1e9:.1f} GB/s here")


if __name__ == "__main__":
    main()
