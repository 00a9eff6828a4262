"""The two-stage pipeline on one GPU through the HTTP API, beside the engine in one process.

`duet worker` (layers [14, 28) and the LM head) and `duet master` (layers [0, 14) and the API)
run as two processes on the same GPU over loopback gRPC; openai clients (several processes,
pipeline_load.py) stream completions (32-token prompts, 128 output tokens, greedy) at
concurrency 1, 16 and 64, and one 2,000-token prompt for its time to first token. In the same
run: the engine in one process (batch 1 and 64, CUDA graphs), then each run named: by default
the `triton` executor and the `local` one, each with 1 micro-batch in flight (both stages share
the one GPU: bench/gpu/pipeline.md). The worker takes extra tritonserver flags from the
environment (DUET_WORKER_TRITON_SERVER_ARGS: what bench/gpu/triton_cure.py found to work on
this host); the JSON records them. During each level the master's and worker's counters, and
during the concurrency-1 and -64 levels (with py-spy) their Python stacks, say where the time
goes (pipeline_probe.py). The checkpoint is the R1-Distill-Qwen-7B shape with seeded random
weights, written as safetensors. Needs the API's packages (fastapi, uvicorn, pydantic, openai,
tritonclient, ...): carry them.

    python -m bench.gpu.pipeline_gpu --out pipeline.json [--runs triton1,local1,local2]
        [--worker-device cuda:1]  (each stage on its own GPU, on a machine with two)
    (a run name ending in a digit fixes the micro-batches in flight: triton1, local2, ...;
    NAME+mps runs it under a CUDA MPS daemon (bench/gpu/mps.py): local2+mps, triton1+mps@TREE;
    NAME+bTOKENS sets the master's step_token_budget: local1+b2048;
    NAME@TREE runs the worker and master from another source tree: triton1@../before, with
    the Python of TREE/.python when there is one: device_setup.sh run in TREE with DUET_VENV)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.gpu import pipeline_load as load
from bench.gpu.decode_gpu import SHAPES, engine_decode, free_memory, write_config
from bench.gpu.mps import mps_daemon
from bench.gpu.pipeline_probe import StackSampler, breakdown, scrape
from bench.serving.pipeline_stack import Stack
from engine.config import ModelConfig
from engine.stage import Stage
from engine.tiny_configs import generation_config, tiny_config
from engine.tiny_model import copy_tokenizer, random_tensors, write_shards
from runtime.children import free_port

SPLIT = 14
LEVELS = ((1, 3), (16, 2), (64, 2))  # (concurrency, requests per user)
# concurrency -> py-spy (seconds, delay_s) of busy threads: at 1 and 16 over the whole level
# (its clients' start included: a fixed window missed c1's three requests, and c16's first
# round is where its time to first token goes), at 64 once clients run
SAMPLED = {1: (8, 0.0), 16: (6, 0.0), 64: (4, 2.5)}
# --dry-run: the same flow on this host's CPU with the serving benchmark's small checkpoint
# (8 layers, split 4 | 4), to check the script before spending device time on it.
DRY = dict(device="cpu", dtype="float32", split=4, levels=((1, 1), (16, 1), (64, 1)))


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
    free_memory()
    return folder


def dry_checkpoint(tmp: Path) -> Path:
    """A small qwen2 checkpoint with the real vocabulary (the tokenizer's end-of-text id must
    lie inside it), 8 layers."""
    out = tmp / "small"
    out.mkdir(parents=True)
    raw = {**tiny_config("qwen2", 8), "vocab_size": 152064}
    write_shards(random_tensors(ModelConfig.from_dict(raw), seed=0), out, 8)
    (out / "config.json").write_text(json.dumps(raw))
    (out / "generation_config.json").write_text(json.dumps(generation_config(raw)))
    copy_tokenizer("qwen_tokenizer", out)
    return out


def in_process(model: Path) -> dict:
    """The whole model in this process, graphs up to 64: the reference for the ratios."""
    stage = Stage.load(model, 0, SHAPES["qwen7b"][1], dtype="bfloat16", device="cuda",
                       kv_cache_bytes=4 * 2**30, cuda_graph_max_batch=64)
    out = {}
    for batch, steps in ((1, 64), (64, 32)):
        r = engine_decode(stage, batch, load.PROMPT_TOKENS, steps, f"b{batch}-")
        out[f"batch_{batch}"] = {"step_ms_p50": r["step_ms_p50"], "tok_s": r["tokens_per_s"]}
    del stage
    free_memory()
    return out


class GpuStack(Stack):
    """Worker and master on the GPU, bf16, graphs for steps of up to 128 new tokens."""

    def __init__(self, tmp: Path, model: Path, executor: str, inflight: int,  # noqa: no super
                 device: str = "cuda", split: int = SPLIT, dtype: str = "bfloat16",
                 tree: Path | None = None, worker_device: str | None = None,
                 step_token_budget: int | None = None):
        self.tmp, self.procs = tmp, []
        self.cwd = tree  # pipeline_stack.Stack starts the processes there (None: this tree)
        # TREE/.python: that tree's own environment, so that the tail inside Triton (whose
        # stub imports duet from the environment first on PATH) runs that tree's code too
        if tree is not None and (tree / ".python").exists():
            self.python = str(tree / ".python")
        port, metrics = free_port(), free_port()
        kv_bytes = 8 * 2**30 if device == "cuda" else 2**28
        # graphs up to 128 new tokens: 64 decodes and the prompts (32 tokens) that join them
        common = dict(model_dir=str(model), dtype=dtype, device=device,
                      kv_cache_bytes=kv_bytes, cuda_graph_max_batch=128 if device == "cuda" else 0)
        self._start("worker", dict(common, device=worker_device or device,
                                   layer_start=split, listen=f"127.0.0.1:{port}",
                                   executor=executor, run_dir=str(tmp / "triton"),
                                   metrics_listen=f"127.0.0.1:{metrics}"), r"worker ready")
        budget = {} if step_token_budget is None else {"step_token_budget": step_token_budget}
        self.url = self._start("master", dict(common, head_layer_end=split, port=0,
                                              worker_address=f"127.0.0.1:{port}", max_num_seqs=64,
                                              max_inflight_batches=inflight,
                                              **budget),
                               r"duet master: serving (http://\S+)")
        self.metrics = {"master": self.url, "worker": f"http://127.0.0.1:{metrics}"}
        self.pids = {"worker": self.procs[0].pid, "master": self.procs[1].pid}
        if executor == "triton" and (stub := stub_pid()) is not None:
            self.pids["triton_stub"] = stub  # where the tail runs inside Triton


def stub_pid() -> int | None:
    """The Triton Python-backend stub process (the tail model's), if one runs."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"triton_python_backend_stub" in cmdline.read_bytes():
                return int(cmdline.parent.name)
        except OSError:  # ended meanwhile
            continue
    return None


def drive(stack: GpuStack, name: str, levels, ttft: bool) -> dict:
    load.warm_up(stack.url, name)
    out = {"levels": []}
    for concurrency, rounds in levels:
        sampler = StackSampler(stack.pids, *SAMPLED[concurrency]) if concurrency in SAMPLED \
            else None
        before = scrape(stack.metrics)
        result = load.level(stack.url, name, concurrency, rounds)
        result["breakdown"] = breakdown(before, scrape(stack.metrics))
        if sampler is not None:
            result["py_spy"] = sampler.summary()
        out["levels"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "py_spy"}), flush=True)
    if ttft:
        out |= long_prompt_ttft(stack, name)
    return out


def long_prompt_ttft(stack: GpuStack, name: str) -> dict:
    """The 2,000-token prompt's TTFT (median of 3, alone on the server), with the servers' own
    account of those steps: hop, worker step, tail, server TTFT."""
    before = scrape(stack.metrics)
    ttft = load.ttft_ms(stack.url, name)
    return {"ttft_2000_ms_p50": ttft,
            "ttft_2000_breakdown": breakdown(before, scrape(stack.metrics))}


def run_one(tmp: Path, model: Path, executor: str, inflight: int, levels, ttft: bool,
            **where) -> dict:
    stack = None
    started = time.perf_counter()
    try:
        stack = GpuStack(tmp, model, executor, inflight, **where)
        result = {"executor": executor, "max_inflight_batches": inflight,
                  "start_s": time.perf_counter() - started}
        return result | drive(stack, model.name, levels, ttft)
    except Exception as e:  # record it (with tritonserver's log); the other runs may still work
        server_log = tmp / "triton" / "tritonserver.log"
        tail = server_log.read_text(errors="replace").splitlines()[-40:] if (
            executor == "triton" and server_log.exists()) else []
        return {"executor": executor, "max_inflight_batches": inflight,
                "error": f"{type(e).__name__}: {str(e)[-3000:]}", "server_log": tail}
    finally:
        if stack is not None:
            stack.stop()


def parse_run(run: str) -> tuple[dict, dict]:
    """EXECUTOR[N][+mps][+bTOKENS][@TREE] -> ({executor, inflight}, {mps, budget, tree}):
    local2+mps, triton1+b2048@../before (inflight None: the best local run's so far)."""
    head, _, tree = run.partition("@")
    name, *flags = head.split("+")
    unknown = [f for f in flags if f != "mps" and not (f[:1] == "b" and f[1:].isdigit())]
    if unknown:
        raise SystemExit(f"--runs: {run!r}: unknown option {unknown[0]!r} (mps, bTOKENS)")
    budget = next((int(f[1:]) for f in flags if f.startswith("b")), None)
    return ({"executor": "triton" if name.startswith("triton") else "local",
             "inflight": int(name[-1]) if name[-1].isdigit() else None},
            {"mps": "mps" in flags, "budget": budget,
             "tree": Path(tree).resolve() if tree else None})


def best_inflight(runs: dict) -> int:
    """The in-flight limit whose local run streamed the most at concurrency 64."""
    scored = [(r["levels"][-1]["aggregate_tok_s"], r["max_inflight_batches"])
              for r in runs.values() if r.get("executor") == "local" and "levels" in r]
    return max(scored)[1] if scored else 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", default="triton1,local1")
    parser.add_argument("--concurrency", default="1,16,64", help="levels to run, of 1,16,64")
    parser.add_argument("--no-in-process", action="store_true",
                        help="skip the engine in one process (a call that compares runs only)")
    parser.add_argument("--dry-run", action="store_true", help="small checkpoint, this CPU")
    parser.add_argument("--worker-device", default=None,
                        help="the worker's GPU, e.g. cuda:1 (default: the master's, cuda)")
    args = parser.parse_args()
    dry = DRY if args.dry_run else None
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(0),
               "split": f"{SPLIT} | {SPLIT}", "worker_device": args.worker_device or "cuda",
               "prompt_tokens": load.PROMPT_TOKENS, "output_tokens": load.OUTPUT_TOKENS,
               "cpu_cores": os.cpu_count(), "runs": {},
               "triton_server_args": os.environ.get("DUET_WORKER_TRITON_SERVER_ARGS", "")}
    plans = [(run, *parse_run(run)) for run in args.runs.split(",")]  # bad names: now
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = dry_checkpoint(Path(tmp)) if dry else write_checkpoint(Path(tmp) / "qwen7b")
        results["checkpoint_write_s"] = time.perf_counter() - t0
        if not dry and not args.no_in_process:
            results["in_process"] = in_process(model)
            print(json.dumps(results["in_process"]), flush=True)
        where = {k: dry[k] for k in ("device", "dtype", "split")} if dry else {}
        where["worker_device"] = args.worker_device
        wanted = {int(c) for c in args.concurrency.split(",")}
        all_levels = [lv for lv in (dry["levels"] if dry else LEVELS) if lv[0] in wanted]
        for run, name, options in plans:
            inflight = name["inflight"] or best_inflight(results["runs"])
            try:
                with mps_daemon(Path(tmp) / "mps") if options["mps"] else nullcontext():
                    result = run_one(Path(tmp), model, name["executor"], inflight, all_levels,
                                     True, **where, tree=options["tree"],
                                     step_token_budget=options["budget"])
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # no daemon
                result = {"executor": name["executor"], "max_inflight_batches": inflight,
                          "error": f"MPS: {e}"}
            repeat = sum(1 for key in results["runs"] if key.split("#")[0] == run)
            key = f"{run}#{repeat + 1}" if repeat else run  # an interleaved repeat keeps its own
            results["runs"][key] = result | {"mps": options["mps"],
                                             "step_token_budget": options["budget"]}
            Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
