"""Greedy tokens of the tiny FP8 checkpoint, native vs dequantize (bench_fp8.py's token check).

The bf16 pairs run as `duet serve` splits the model: a head stage [0, k) (the master's) and a
tail stage [k, L) (the worker's, with its final norm, LM head and decode graphs), hidden states
handed from one to the other in process. The same comparison through `duet serve` processes,
the HTTP API and the tokenizer: bench/fp8/serve_greedy.py.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.fp8 import measure
from engine.batch import SeqChunk, StepBatch

SPLIT = 2  # the tiny V3 has 4 layers: head [0, 2), tail [2, 4)


class Pipeline:
    """Head stage then tail stage, as master and worker run them (one process here)."""

    def __init__(self, folder: Path, fp8: str, dtype: str):
        from engine.stage import Stage

        kw = dict(dtype=dtype, device=measure.DEVICE, fp8=fp8, kv_cache_bytes=2**24)
        self.head = Stage.load(folder, 0, SPLIT, **kw)
        self.tail = Stage.load(folder, SPLIT, 4, cuda_graph_max_batch=8 if measure.DEVICE == "cuda" else 0, **kw)

    def forward(self, batch: StepBatch, ids: torch.Tensor) -> torch.Tensor:
        return self.tail.forward(batch, self.head.forward(batch, ids))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.tail.compute_logits(hidden)

    def release(self, seq: str) -> None:
        self.head.release(seq)
        self.tail.release(seq)


def tiny_greedy(folder: Path, prompts: int = 4, tokens: int = 32) -> list[dict]:
    """Greedy tokens of the tiny FP8 checkpoint, native vs dequantize in bf16 (head + tail
    pipeline) and in fp32 (one stage), and bf16- vs fp32-dequantize (the noise floor of bf16
    itself); "forced" feeds each step the reference's token, so that one near-tie flip does not
    derail the rest."""
    from engine.stage import Stage
    from engine.tiny_model import write_tiny_model

    write_tiny_model("deepseek_v3", folder, fp8=True, tokenizer=False)
    runs = {(m, "bfloat16"): Pipeline(folder, m, "bfloat16") for m in ("native", "dequantize")}
    runs |= {(m, "float32"): Stage.load(folder, 0, 4, dtype="float32", device=measure.DEVICE, fp8=m,
                                        kv_cache_bytes=2**24) for m in ("native", "dequantize")}
    pairs = {"native_vs_dequantize_bf16": (("native", "bfloat16"), ("dequantize", "bfloat16")),
             "native_vs_dequantize_fp32": (("native", "float32"), ("dequantize", "float32")),
             "bf16_vs_fp32_dequantize": (("dequantize", "bfloat16"), ("dequantize", "float32"))}
    gen = torch.Generator().manual_seed(7)
    out = []
    for p in range(prompts):
        prompt = torch.randint(0, 120000, (12,), generator=gen).tolist()
        row = {"of": tokens}
        for name, (test, ref) in pairs.items():
            want = _greedy(runs[ref], "r", prompt, tokens)
            free = _greedy(runs[test], "f", prompt, tokens)
            forced = _greedy(runs[test], "t", prompt, tokens, forced=want)
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
