"""The two-stage pipeline on one GPU through the HTTP API, beside the engine in one process.

`duet worker` (layers [14, 28) and the LM head) and `duet master` (layers [0, 14) and the API)
run as two processes on the same GPU, over loopback gRPC with the `local` executor; the
async openai client streams completions (32-token prompts, 128 output tokens, greedy) at
concurrency 1, 16 and 64, and one 2,000-token prompt for its time to first token. The
checkpoint is the R1-Distill-Qwen-7B shape with seeded random weights, written as safetensors.
Needs the API's packages (fastapi, uvicorn, pydantic, openai, tritonclient, ...): carry them.

    python -m bench.gpu.pipeline_gpu --out pipeline.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import openai
import torch
from safetensors.torch import save_file

from bench.gpu.decode_gpu import SHAPES, write_config
from bench.serving.pipeline_stack import Stack, _free_port
from engine.stage import Stage
from engine.tiny_model import copy_tokenizer

SPLIT, PROMPT_TOKENS, OUTPUT_TOKENS = 14, 32, 128


def write_checkpoint(folder: Path) -> Path:
    """The 7B shape with the engine's dummy weights, saved as one safetensors file."""
    folder.mkdir(parents=True, exist_ok=True)
    write_config("qwen7b", folder)
    copy_tokenizer("qwen_tokenizer", folder)
    stage = Stage.load(folder, 0, SHAPES["qwen7b"][1], dtype="bfloat16", device="cuda",
                       kv_cache_bytes=2**26, load_format="dummy")
    save_file({n: p.detach().cpu() for n, p in stage.model.state_dict().items()},
              folder / "model.safetensors")
    del stage
    torch.cuda.empty_cache()
    return folder


class GpuStack(Stack):
    """Worker and master on the GPU, bf16, decode graphs up to 64 sequences."""

    def __init__(self, tmp: Path, model: Path, executor: str):  # noqa: super() starts CPU ones
        self.tmp, self.procs = tmp, []
        port = _free_port()
        common = dict(model_dir=str(model), dtype="bfloat16", device="cuda",
                      kv_cache_bytes=8 * 2**30, cuda_graph_max_batch=64)
        self._start("worker", dict(common, layer_start=SPLIT, listen=f"127.0.0.1:{port}",
                                   executor=executor, run_dir=str(tmp / "triton")), r"worker ready")
        self.url = self._start("master", dict(common, head_layer_end=SPLIT, port=0,
                                              worker_address=f"127.0.0.1:{port}", max_num_seqs=64),
                               r"duet master: serving (http://\S+)")


def prompt(i: int, n: int = PROMPT_TOKENS) -> list[int]:
    return [(1000 + 37 * i + 11 * j) % 150_000 for j in range(n)]


async def one_request(client, name: str, ids: list[int], max_tokens: int) -> dict:
    """One streamed greedy completion: time to its first chunk, tokens, tok/s after the first."""
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async for chunk in await client.completions.create(
            model=name, prompt=ids, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}):
        now = time.perf_counter()
        first, last = first or now, now if chunk.choices else last
        tokens = chunk.usage.completion_tokens if chunk.usage else tokens
    return {"ttft_s": first - start, "tokens": tokens, "tok_s": (tokens - 1) / max(last - first, 1e-9)}


async def level(client, name: str, concurrency: int, rounds: int) -> dict:
    async def user(u: int) -> list[dict]:
        return [await one_request(client, name, prompt(u * rounds + r), OUTPUT_TOKENS)
                for r in range(rounds)]

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(user(u) for u in range(concurrency))) for r in rs]
    wall = time.perf_counter() - start
    per_req = sorted(r["tok_s"] for r in results)
    return {"concurrency": concurrency, "requests": len(results),
            "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
            "tok_s_per_request_p50": per_req[len(per_req) // 2],
            "ttft_ms_p50": sorted(r["ttft_s"] for r in results)[len(results) // 2] * 1e3}


async def drive(url: str, name: str) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    await one_request(client, name, prompt(9999), 8)  # warm-up: graphs of small buckets
    out = {"levels": [await level(client, name, c, r) for c, r in ((1, 3), (16, 2), (64, 2))]}
    long = [await one_request(client, name, prompt(5000 + i, 2000), 1) for i in range(3)]
    out["ttft_2000_ms_p50"] = sorted(r["ttft_s"] for r in long)[1] * 1e3
    await client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--executors", default="local")
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "device": torch.cuda.get_device_name(0), "split": f"{SPLIT} | {SPLIT}",
               "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS, "executors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = write_checkpoint(Path(tmp) / "qwen7b")
        results["checkpoint_write_s"] = time.perf_counter() - t0
        for executor in args.executors.split(","):
            stack = None
            try:
                stack = GpuStack(Path(tmp), model, executor)
                results["executors"][executor] = asyncio.run(drive(stack.url, model.name))
            except Exception as e:  # record it; the other executor may still run
                results["executors"][executor] = {"error": f"{type(e).__name__}: {str(e)[-3000:]}"}
            finally:
                if stack is not None:
                    stack.stop()
            Path(args.out).write_text(json.dumps(results, indent=2))
            print(json.dumps({executor: results["executors"][executor]}), flush=True)


if __name__ == "__main__":
    main()
