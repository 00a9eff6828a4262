"""Which shape of the Triton path costs least per step, measured side by side on loopback:

  local          a `duet worker` process, executor local, over a Step stream (no Triton)
  triton         a `duet worker` process, executor triton (managed tritonserver): the master
                 -> worker -> Triton relay as this tree builds it
  triton-before  the same from another tree (--before DIR: e.g. `git archive` of the commit
                 before the change), its own tritonserver
  direct         this process streaming straight into the `triton` worker's tritonserver with
                 the worker's own executor code (TritonExecutor pointed at its port): what the
                 master would pay if it streamed into Triton's ModelStreamInfer itself, with no
                 relay process and no second gRPC hop (an upper bound of that design's gain:
                 its handshake, lifecycle and TLS are not in it)

Decode steps (one new token per sequence, greedy) on a tiny qwen2 checkpoint, at batch 1 and
16, modes interleaved in rounds. *overhead* = step wall time minus the tail's own compute time
(`StepReply.worker_compute_s`, timed inside the TailRunner wherever it runs).

    python -m bench.worker.triton_relay [--steps 400] [--rounds 4] [--before DIR]
        [--out bench/worker/triton_relay.json]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import torch

from bench.worker.hop_latency import (KV_CACHE_BYTES, LAYERS, SPLIT, Decoder, percentiles,
                                      time_stream, wait_ready)
from engine.tiny_model import write_tiny_model
from proto import pipeline_pb2_grpc as pb_grpc
from runtime.children import free_port
from worker.config import WorkerConfig
from worker.triton_executor import TritonExecutor


def start_worker(ckpt: Path, executor: str, tmp: Path, name: str, tree: Path,
                 triton_port: int = 0) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{free_port()}"
    toml = tmp / f"{name}.toml"
    toml.write_text(
        f'model_dir = "{ckpt}"\nlayer_start = {SPLIT}\ndtype = "float32"\n'
        f'kv_cache_bytes = {KV_CACHE_BYTES}\nlisten = "{address}"\nexecutor = "{executor}"\n'
        f'torch_threads = 1\nrun_dir = "{tmp / name}"\ntriton_grpc_port = {triton_port}\n')
    log = open(tmp / f"{name}.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([sys.executable, "-m", "duet.cli", "worker", "--config", str(toml)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=env)
    return proc, address


class DirectCall:
    """The Step-stream interface (write, read) over a TritonExecutor in this process."""

    def __init__(self, executor: TritonExecutor):
        self.executor, self.pending = executor, None

    async def write(self, request) -> None:
        self.pending = request

    async def read(self):
        return await self.executor.step("direct", self.pending)

    def cancel(self) -> None:
        pass


async def run(args) -> dict:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="duet-relay-"))
    ckpt = write_tiny_model("qwen2", tmp / "ckpt", num_layers=LAYERS)
    here = Path(__file__).resolve().parents[2]
    triton_port = free_port()
    workers = {"local": start_worker(ckpt, "local", tmp, "local", here),
               "triton": start_worker(ckpt, "triton", tmp, "triton", here, triton_port)}
    if args.before:
        workers["triton-before"] = start_worker(ckpt, "triton", tmp, "before",
                                                Path(args.before))
    direct = None
    try:
        for proc, address in workers.values():
            await wait_ready(address, proc)
        direct = TritonExecutor(WorkerConfig(model_dir=str(ckpt), layer_start=SPLIT,
                                             triton_url=f"127.0.0.1:{triton_port}"))
        await direct.start()
        return await measure(args, {m: a for m, (_, a) in workers.items()}, direct)
    finally:
        if direct is not None:
            await direct.close()
        for proc, _ in workers.values():
            proc.terminate()
            proc.wait(60)


async def measure(args, addresses: dict[str, str], direct: TritonExecutor) -> dict:
    channels = {m: grpc.aio.insecure_channel(a) for m, a in addresses.items()}
    samples: dict[str, dict[int, list]] = {}
    for batch in args.batches:
        calls = {m: pb_grpc.PipelineStub(ch).Step() for m, ch in channels.items()}
        calls["direct"] = DirectCall(direct)
        decoders = {m: Decoder(batch, f"b{batch}") for m in calls}
        per_round = args.steps // args.rounds
        for round_ in range(args.rounds + 1):  # round 0 warms up and is dropped
            for mode, call in calls.items():
                got = await time_stream(call, decoders[mode], 20 if round_ == 0 else per_round)
                if round_:
                    samples.setdefault(mode, {}).setdefault(batch, []).extend(got)
        for call in calls.values():
            call.cancel()
    for ch in channels.values():
        await ch.close()
    return summarize(args, samples)


def summarize(args, samples) -> dict:
    rows = []
    for mode, by_batch in samples.items():
        for batch, values in by_batch.items():
            step = percentiles([w for w, _ in values])
            over = percentiles([w - c for w, c in values])
            rows.append({"mode": mode, "batch": batch, "step_p50_us": round(step[0]),
                         "step_p99_us": round(step[1]), "overhead_p50_us": round(over[0]),
                         "overhead_p99_us": round(over[1])})
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.node()}, nproc {os.cpu_count()}, load before "
                       f"{args.load_before}", "python": platform.python_version(),
            "torch": torch.__version__, "steps": args.steps, "rounds": args.rounds,
            "before": args.before or None, "rows": rows}


def render(result: dict) -> str:
    lines = [f"{result['date']}, {result['machine']}; {result['steps']} steps per mode and "
             f"batch in {result['rounds']} rounds", "",
             "| batch | mode | step p50 µs | step p99 µs | overhead p50 µs | overhead p99 µs |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in sorted(result["rows"], key=lambda r: r["batch"]):
        lines.append(f"| {r['batch']} | {r['mode']} | {r['step_p50_us']} | {r['step_p99_us']} | "
                     f"{r['overhead_p50_us']} | {r['overhead_p99_us']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--before", help="a tree whose triton worker is measured beside")
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args()
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    result = asyncio.run(run(args))
    print(render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
