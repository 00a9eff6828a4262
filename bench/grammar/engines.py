"""llguidance against xgrammar on this machine, with the DeepSeek-V3 tokenizer (129,280 ids):
compile time of a typical JSON schema and per-token mask time at batch 64.

    python -m bench.grammar.engines --out bench/grammar/engines.md   (llguidance: pip install llguidance)

Compile: a fresh matcher (llguidance) / a fresh compile with an empty cache (xgrammar) of the
schema below, vocabulary set up once beforehand (its time reported apart). Mask: 64 sequences,
each a different valid instance tokenized by the real tokenizer; per step every row's bitmask
is filled (each engine's batched call) and every row consumes its next token; the step time
is the mean over the tokens of the shortest instance. Compact JSON (no free whitespace) in both.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 5},
        "address": {"type": "object", "properties": {
            "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"], "additionalProperties": False},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "role", "tags", "address", "active"],
    "additionalProperties": False,
}
BATCH = 64


def instance(rng: random.Random) -> str:
    word = lambda n: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))  # noqa: E731
    value = {"name": word(rng.randint(5, 20)).title(), "age": rng.randint(0, 150),
             "email": f"{word(5)}@{word(6)}.com", "role": rng.choice(["admin", "editor", "viewer"]),
             "tags": [word(rng.randint(2, 10)) for _ in range(rng.randint(1, 5))],
             "address": {"city": word(8).title(), "zip": f"{rng.randint(0, 99999):05d}"},
             "active": rng.random() < 0.5}
    return json.dumps(value, separators=(",", ":"))


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_llguidance(tok_json: str, vocab: int, rows: list[list[int]]) -> dict:
    from llguidance import LLExecutor, LLMatcher, LLTokenizer
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask_par

    start = time.perf_counter()
    tok = LLTokenizer(tok_json, n_vocab=vocab)
    setup_s = time.perf_counter() - start
    grammar = LLMatcher.grammar_from_json_schema(
        SCHEMA, overrides={"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"})
    compile_s = timed(lambda: LLMatcher(tok, grammar), 5)
    matchers, executor = [LLMatcher(tok, grammar) for _ in rows], LLExecutor()
    bitmask = allocate_token_bitmask(len(rows), vocab)
    steps = min(len(r) for r in rows)
    start = time.perf_counter()
    for t in range(steps):
        fill_next_token_bitmask_par(executor, [(m, i) for i, m in enumerate(matchers)], bitmask)
        for m, r in zip(matchers, rows):
            assert m.consume_token(r[t]), m.get_error()
    return {"setup_s": setup_s, "compile_s": compile_s,
            "mask_step_s": (time.perf_counter() - start) / steps}


def bench_xgrammar(tok_json: str, vocab: int, rows: list[list[int]]) -> dict:
    import xgrammar as xgr

    start = time.perf_counter()
    data = json.loads(tok_json)
    encoded = [""] * vocab
    for piece, i in data["model"]["vocab"].items():
        encoded[i] = piece
    for added in data.get("added_tokens", []):
        encoded[added["id"]] = added["content"]
    info = xgr.TokenizerInfo(encoded, vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=vocab)
    setup_s = time.perf_counter() - start
    schema = json.dumps(SCHEMA)

    def compile_fresh():
        compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        return compiler.compile_json_schema(schema, any_whitespace=False, separators=(",", ":"))

    compile_s = timed(compile_fresh, 5)
    compiled = compile_fresh()
    matchers = [xgr.GrammarMatcher(compiled) for _ in rows]
    batch = xgr.BatchGrammarMatcher()
    bitmask = xgr.allocate_token_bitmask(len(rows), info.vocab_size)
    steps = min(len(r) for r in rows)
    start = time.perf_counter()
    for t in range(steps):
        batch.batch_fill_next_token_bitmask(matchers, bitmask)
        for m, r in zip(matchers, rows):
            assert m.accept_token(r[t]), (t, r[:t + 1])
    return {"setup_s": setup_s, "compile_s": compile_s,
            "mask_step_s": (time.perf_counter() - start) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from engine.tiny_model import write_tiny_model
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(write_tiny_model("deepseek_v3", Path(tmp) / "m", seed=0, num_layers=2))
        tok_json = (model / "tokenizer.json").read_text()
        vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    import tokenizers
    tokenizer = tokenizers.Tokenizer.from_str(tok_json)
    rng = random.Random(0)
    rows = [tokenizer.encode(instance(rng), add_special_tokens=False).ids for _ in range(BATCH)]
    results = {}
    for name, bench in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
        try:
            results[name] = bench(tok_json, vocab, rows)
        except ImportError:
            print(f"{name} is not installed: left out")
    report(results, vocab, min(len(r) for r in rows), args.out)


def report(results: dict, vocab: int, steps: int, out: Path | None) -> None:
    import importlib.metadata as md
    lines = ["| engine | version | vocab set-up | compile (schema) | mask, batch 64, per step | per row |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {md.version(name)} | {r['setup_s'] * 1e3:.0f} ms | "
                     f"{r['compile_s'] * 1e3:.1f} ms | {r['mask_step_s'] * 1e3:.2f} ms | "
                     f"{r['mask_step_s'] / BATCH * 1e6:.0f} µs |")
    header = (f"{datetime.date.today()} · {platform.processor() or platform.machine()} · "
              f"{os.cpu_count()} CPUs · torch {torch.__version__} · vocab {vocab} · "
              f"{steps} steps of {BATCH} rows")
    text = header + "\n\n" + "\n".join(lines) + "\n"
    print(text)
    if out:
        out.write_text(text)


if __name__ == "__main__":
    main()
