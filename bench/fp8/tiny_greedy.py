"""Greedy tokens of the tiny FP8 checkpoint, native vs dequantize (bench_fp8.py's token check)."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.fp8 import measure
from engine.batch import SeqChunk, StepBatch


def tiny_greedy(folder: Path, prompts: int = 4, tokens: int = 32) -> list[dict]:
    """Greedy tokens of the tiny FP8 checkpoint, native vs dequantize in bf16 and in fp32, and
    bf16-dequantize vs fp32-dequantize (the noise floor of bf16 itself); "forced" feeds each
    step the reference's token, so that one near-tie flip does not derail the rest."""
    from engine.stage import Stage
    from engine.tiny_model import write_tiny_model

    write_tiny_model("deepseek_v3", folder, fp8=True, tokenizer=False)
    stages = {(m, d): Stage.load(folder, 0, 4, dtype=d, device=measure.DEVICE, fp8=m, kv_cache_bytes=2**24)
              for m in ("native", "dequantize") for d in ("bfloat16", "float32")}
    pairs = {"native_vs_dequantize_bf16": (("native", "bfloat16"), ("dequantize", "bfloat16")),
             "native_vs_dequantize_fp32": (("native", "float32"), ("dequantize", "float32")),
             "bf16_vs_fp32_dequantize": (("dequantize", "bfloat16"), ("dequantize", "float32"))}
    gen = torch.Generator().manual_seed(7)
    out = []
    for p in range(prompts):
        prompt = torch.randint(0, 120000, (12,), generator=gen).tolist()
        row = {"of": tokens}
        for name, (test, ref) in pairs.items():
            want = _greedy(stages[ref], "r", prompt, tokens)
            free = _greedy(stages[test], "f", prompt, tokens)
            forced = _greedy(stages[test], "t", prompt, tokens, forced=want)
            row[name] = {"free": sum(a == b for a, b in zip(want, free)),
                         "forced": sum(a == b for a, b in zip(want, forced))}
        out.append(row)
    return out


def _greedy(stage, seq: str, prompt: list[int], n: int, forced: list[int] | None = None):
    hidden = stage.forward(StepBatch((SeqChunk(seq, 0, len(prompt)),)), torch.tensor(prompt))
    out, pos = [], len(prompt)
    for i in range(n):
        tok = int(stage.compute_logits(hidden[-1:]).argmax(-1))
        out.append(tok)
        feed = forced[i] if forced else tok
        hidden = stage.forward(StepBatch((SeqChunk(seq, pos, 1),)), torch.tensor([feed]))
        pos += 1
    stage.release(seq)
    return out
