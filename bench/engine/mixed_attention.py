"""One attention layer in an eager step that mixes decodes with a prompt chunk, two ways, side by
side in one process:

  - padded: every sequence's queries padded to the longest chunk and its context to the longest
    context, one batch (how every mixed eager step ran before engine.attention.StepParts);
  - parts: the decodes as one batch (one query each) and the chunk as another (today's path).

    python bench/engine/mixed_attention.py --out bench/engine/mixed_attention.md

R1-Distill-Qwen-7B's attention shape (28 query heads, 4 KV heads, head dim 128), fp32 on the
CPU. A mixed step is eager when it has more new tokens than `cuda_graph_max_batch` (a prompt
chunk longer than the graph buckets joining running decodes); on a GPU the padded batch does
the same wasted work in the attention kernel, so the ratio, not the CPU milliseconds, carries
over. Runs alternate; medians are kept; both ways must give the same output.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from engine.attention import padded_attention, paged_attention
from engine.batch import SeqChunk, StepBatch
from engine.kv_cache import KVCache

HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128
# (decodes, each decode's context, prompt chunk tokens)
CASES = [(8, 256, 128), (16, 512, 256), (32, 512, 512), (8, 2048, 1024)]
ROUNDS = 5


def mixed_step(decodes: int, context: int, chunk: int) -> tuple[KVCache, StepBatch]:
    """A cache holding `decodes` sequences of `context - 1` tokens and a fresh prompt, and the
    step that decodes each of them once while the prompt's first `chunk` tokens arrive."""
    need = (decodes * (context + 16) + chunk + 16) * 2 * KV_HEADS * HEAD_DIM * 4
    kv = KVCache([(KV_HEADS, HEAD_DIM)] * 2, {0: torch.device("cpu")}, need)
    chunks = [SeqChunk(f"d{i}", context - 1, 1) for i in range(decodes)]
    chunks.append(SeqChunk("prompt", 0, chunk))
    kv.reserve_all((c.seq_id, c.end_pos) for c in chunks)
    return kv, StepBatch(tuple(chunks))


def time_one(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def measure(decodes: int, context: int, chunk: int) -> dict:
    kv, step = mixed_step(decodes, context, chunk)
    caches = kv.layers[0]
    for cache in caches:
        cache.normal_()
    g = torch.Generator().manual_seed(0)
    t = step.num_tokens
    q = torch.randn(t, HEADS, HEAD_DIM, generator=g)
    k, v = (torch.randn(t, KV_HEADS, HEAD_DIM, generator=g) for _ in range(2))
    scale = HEAD_DIM**-0.5

    def padded() -> torch.Tensor:
        ctx = kv.build_context(step)
        return padded_attention(q, *caches, ctx, scale)  # paged_attention wrote k/v already

    def parts() -> torch.Tensor:
        return paged_attention(q, k, v, caches, kv.build_context(step), scale)

    same = (parts() - padded()).abs().max().item()
    times = {"padded": [], "parts": []}
    for _ in range(ROUNDS):
        for name, fn in (("padded", padded), ("parts", parts)):
            times[name].append(time_one(fn))
    ms = {name: statistics.median(v) for name, v in times.items()}
    return {"decodes": decodes, "decode_context": context, "chunk_tokens": chunk,
            "padded_ms": round(ms["padded"], 2), "parts_ms": round(ms["parts"], 2),
            "speedup": round(ms["padded"] / ms["parts"], 2), "max_abs_diff": same}


def render(results: list[dict], meta: dict) -> str:
    lines = [f"# Attention in a mixed eager step: padded vs decodes and chunk apart "
             f"({meta['date']})",
             "", f"Machine: `{meta['machine']}`, {meta['threads']} torch threads; one layer, "
             f"{HEADS} query / {KV_HEADS} KV heads of {HEAD_DIM}, fp32, medians of {ROUNDS} "
             "alternating runs. `python bench/engine/mixed_attention.py`.", "",
             "| decodes × context | prompt chunk | padded ms | parts ms | padded / parts "
             "| max diff |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['decodes']} × {r['decode_context']} | {r['chunk_tokens']} | "
                     f"{r['padded_ms']} | {r['parts_ms']} | {r['speedup']}× | "
                     f"{r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="markdown table; JSON beside it")
    args = ap.parse_args()
    torch.manual_seed(0)
    meta = {"date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(),
            "machine": f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}"}
    results = [measure(*case) for case in CASES]
    table = render(results, meta)
    print(table)
    if args.out:
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results},
                                                            indent=1) + "\n")


if __name__ == "__main__":
    main()
