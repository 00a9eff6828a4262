"""What structured outputs cost per output token: the tiny DeepSeek-V3 checkpoint (real
129,280-id tokenizer) decoding at batch 1 and 32, each step's logits sampled twice side by
side, without grammars and with one JSON-schema matcher per row (bench/grammar/engines.py's
schema, xgrammar through engine/guide.py); the difference over the plain decode step.

    python -m bench.grammar.overhead [--device cuda] --out bench/grammar/overhead.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.grammar.engines import SCHEMA
from engine.batch import SeqChunk, StepBatch
from engine.constraint import Constraint
from engine.guide import GuideFactory
from engine.sampler import SamplerState, sample
from engine.sampling_params import SamplingParams
from engine.stage import Stage
from engine.tiny_model import write_tiny_model

PROMPT_TOKENS, STEPS = 16, 48


def sync(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def run(stage: Stage, factory: GuideFactory, batch: int, device: str) -> dict:
    """Mean seconds per step: the plain step (forward + logits + sample) and the guided
    sampler's extra time over the plain sampler on the same logits."""
    params = SamplingParams(temperature=0.7, seed=1)
    constraint = Constraint.json_schema(SCHEMA)
    plain = [SamplerState.create(params) for _ in range(batch)]
    guided = [SamplerState.create(params, factory.create(constraint)) for _ in range(batch)]
    ids = [f"b{batch}-{i}" for i in range(batch)]
    prompts = torch.randint(0, 1000, (batch * PROMPT_TOKENS,), device=device)
    hidden = stage.forward(StepBatch(tuple(SeqChunk(s, 0, PROMPT_TOKENS) for s in ids)), prompts)
    logits = stage.compute_logits(hidden[[(i + 1) * PROMPT_TOKENS - 1 for i in range(batch)]])
    step_s, extra_s = [], []
    for step in range(STEPS):
        t0 = sync(device)
        tokens = [r.token_id for r in sample(logits, plain)]
        t1 = sync(device)
        sample(logits, guided)
        t2 = sync(device)
        for i, s in enumerate(guided):  # a finished grammar starts over, the bench goes on
            if s.guide.finished() or s.guide.matcher.is_completed():
                guided[i] = SamplerState.create(params, factory.create(constraint))
        batch_ = StepBatch(tuple(SeqChunk(s, PROMPT_TOKENS + step, 1) for s in ids))
        t3 = sync(device)
        logits = stage.compute_logits(stage.forward(batch_, torch.tensor(tokens, device=device)))
        t4 = sync(device)
        step_s.append((t1 - t0) + (t4 - t3))
        extra_s.append((t2 - t1) - (t1 - t0))
    for s in ids:
        stage.release(s)
    skip = 4  # warm-up steps
    return {"step_s": statistics.mean(step_s[skip:]), "extra_s": statistics.mean(extra_s[skip:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = ["| batch | decode step | grammar extra per step | overhead per output token |",
             "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model("deepseek_v3", Path(tmp) / "m", seed=0)
        stage = Stage.load(model, 0, 4, dtype="float32", device=args.device)
        factory = GuideFactory(model, stage.config.vocab_size)
        factory.compiler()  # the vocabulary's one-time set-up is not per token
        for batch in (1, 32):
            r = run(stage, factory, batch, args.device)
            lines.append(f"| {batch} | {r['step_s'] * 1e3:.2f} ms | {r['extra_s'] * 1e3:.2f} ms "
                         f"| {r['extra_s'] / r['step_s']:.1%} |")
    dev = torch.cuda.get_device_name() if args.device == "cuda" else (
        platform.processor() or platform.machine())
    text = (f"{datetime.date.today()} · {dev} · {os.cpu_count()} CPUs · torch "
            f"{torch.__version__} · {STEPS} decode steps after a {PROMPT_TOKENS}-token prompt, "
            "temperature 0.7\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
