"""Greedy tokens of the tiny FP8 checkpoint through `duet serve`: fp8 = "native" vs "dequantize".

The tiny random DeepSeek-V3 checkpoint with FP8 weights (`engine/fp8_writer.py`'s format,
written by `engine.tiny_model`) is served by `duet serve` (a worker process, the master with
the HTTP API in another) once with `--fp8 native` and once with `--fp8 dequantize`, for each
dtype asked; the openai client asks each prompt for 32 greedy tokens with their top-2
logprobs (chat completions: each token comes with its bytes, so tokens compare exactly).
Per prompt: tokens equal position by position, the first position that differs, and there
the dequantize run's margin between its top two tokens (a near-tie that a last-bit difference
of the FP8 GEMM can flip; after a flip the contexts differ, so the rest differs too).

    python -m bench.fp8.serve_greedy --out serve_greedy.json [--dtypes bfloat16,float32]
        [--executor triton|local]
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import torch

PROMPTS = ("Hello!", "Write a haiku about the sea.", "What is 17 times 23?",
           "List three prime numbers and explain why each is prime.")
TOKENS = 32
MODES = ("native", "dequantize")


class Served:
    """`duet serve` for one (fp8 mode, dtype) until the with-block ends."""

    def __init__(self, model: Path, fp8: str, dtype: str, executor: str, log: Path):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "duet.cli", "serve", "--model", str(model), "--port", "0",
             "--fp8", fp8, "--dtype", dtype, "--executor", executor],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT)

    def __enter__(self) -> str:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if m := re.search(r"duet serve: ready at (http://\S+)", self.log.read_text()):
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"duet serve did not get ready:\n{self.log.read_text()[-4000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def greedy(url: str, prompt: str) -> list[dict]:
    """32 greedy tokens: each one's bytes and logprob, and the top two."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=TOKENS,
        temperature=0, logprobs=True, top_logprobs=2)
    return [{"bytes": t.bytes, "logprob": t.logprob,
             "top": [(x.bytes, x.logprob) for x in t.top_logprobs]}
            for t in reply.choices[0].logprobs.content]


def compare(test: list[dict], ref: list[dict]) -> dict:
    """Tokens equal by position; where the first difference is, the reference's top-2 margin."""
    equal = sum(a["bytes"] == b["bytes"] for a, b in zip(test, ref))
    first = next((i for i, (a, b) in enumerate(zip(test, ref)) if a["bytes"] != b["bytes"]), None)
    out = {"equal": equal, "of": min(len(test), len(ref)), "first_difference": first}
    if first is not None:
        top = ref[first]["top"]
        out["ref_top1_logprob_at_first_difference"] = top[0][1]
        out["ref_top2_margin_at_first_difference"] = top[0][1] - top[1][1] if len(top) > 1 else None
        out["test_token_rank_in_ref_top2"] = next(
            (k for k, (b, _) in enumerate(top) if b == test[first]["bytes"]), None)
    return out


def serve_and_ask(model: Path, mode: str, dtype: str, executor: str, log: Path) -> list:
    """Every prompt through one `duet serve`; a serve that never got ready gets one more try
    (tritonserver's gRPC poller was seen aborting at start on the loaded CPU host)."""
    for attempt in (1, 2):
        try:
            with Served(model, mode, dtype, executor, log.with_suffix(f".{attempt}.log")) as url:
                return [greedy(url, p) for p in PROMPTS]
        except RuntimeError:
            if attempt == 2:
                raise


def run_dtype(model: Path, dtype: str, executor: str, logs: Path) -> dict:
    tokens = {}
    for mode in MODES:
        log = logs / f"serve-{mode}-{dtype}"
        tokens[mode] = serve_and_ask(model, mode, dtype, executor, log)
        load_line = [ln for f in sorted(logs.glob(f"serve-{mode}-{dtype}.*.log"))
                     for ln in f.read_text().splitlines() if "FP8 " in ln][:4]
        tokens[f"{mode}_log"] = load_line
    rows = [compare(n, d) for n, d in zip(tokens["native"], tokens["dequantize"])]
    return {"prompts": rows, "min_equal": min(r["equal"] for r in rows),
            "load_log": {m: tokens[f"{m}_log"] for m in MODES},
            "tokens": {m: [[t["bytes"] for t in seq] for seq in tokens[m]] for m in MODES}}


def main() -> None:
    from engine.tiny_model import write_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--executor", default="triton", choices=("triton", "local"))
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device,
               "executor": args.executor, "tokens_per_prompt": TOKENS, "prompts": PROMPTS,
               "dtypes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model("deepseek_v3", Path(tmp) / "tiny-fp8", fp8=True)
        for dtype in args.dtypes.split(","):
            try:
                results["dtypes"][dtype] = run_dtype(model, dtype, args.executor, Path(tmp))
            except Exception as e:  # recorded; the next dtype may still run
                results["dtypes"][dtype] = {"error": f"{type(e).__name__}: {str(e)[-3000:]}"}
            print(dtype, json.dumps({k: v for k, v in results["dtypes"][dtype].items()
                                     if k != "tokens"}), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
