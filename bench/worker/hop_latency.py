"""Per-step cost of the master -> worker hop on loopback, in one run, side by side:

  in-process   TailRunner.step on this process's own tail (no gRPC at all)
  grpc-echo    a bare grpc.aio bidi stream echoing the same request bytes: gRPC's floor here
  noop         the worker's Pipeline service over an executor that computes nothing
  noop-busy    the same, spinning BUSY_S per step like a tail would (see hop_servers.py)
  local        a `duet worker` process, executor local, over a gRPC Step stream
  triton       a `duet worker` process, executor triton (managed tritonserver), same stream

Decode steps (one new token per sequence, greedy) on a tiny qwen2 checkpoint, at batch 1
and 8. Modes are interleaved in rounds so load drifts on a shared machine hit all of them.

    python bench/worker/hop_latency.py [--steps 400] [--rounds 4] [--out results.md]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch

from engine.tiny_model import write_tiny_model
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc
from proto.convert import tensor_to_proto
from worker.tail import TailRunner
from runtime.children import free_port

SPLIT, LAYERS, HIDDEN = 2, 4, 64
KV_CACHE_BYTES = 16 << 20
GREEDY = pb.SamplingParams(temperature=0, logprobs=-1)


class Decoder:
    """Builds the step requests of `batch` sequences decoding together, one step at a time."""

    def __init__(self, batch: int, tag: str):
        self.ids = [f"{tag}-{i}" for i in range(batch)]
        self.pos, self.step_id = 0, 0
        self.hidden = torch.randn(batch, HIDDEN)  # [B, H]

    def next(self) -> pb.StepRequest:
        self.step_id += 1
        seqs = [pb.SeqStep(seq_id=s, start_pos=self.pos, num_tokens=1, sample=True)
                for s in self.ids]
        if self.pos == 0:
            for s in seqs:
                s.params.CopyFrom(GREEDY)
        self.pos += 1
        return pb.StepRequest(step_id=self.step_id, seqs=seqs,
                              hidden=tensor_to_proto(self.hidden))


Sample = tuple[float, float]  # (wall s of the step as the caller saw it, of which tail compute s)


def time_in_process(tail: TailRunner, decoder: Decoder, steps: int) -> list[Sample]:
    out = []
    for _ in range(steps):
        request = decoder.next()
        start = time.perf_counter()
        reply = tail.step("bench", request)
        out.append((time.perf_counter() - start, reply.worker_compute_s))
        assert reply.results[0].WhichOneof("outcome") == "sampled", reply
    return out


async def time_stream(call, decoder: Decoder, steps: int) -> list[Sample]:
    out = []
    for _ in range(steps):
        request = decoder.next()
        start = time.perf_counter()
        await call.write(request)
        reply = await call.read()
        out.append((time.perf_counter() - start, reply.worker_compute_s))
        assert reply.results[0].WhichOneof("outcome") == "sampled", reply
    return out


async def time_echo(call, decoder: Decoder, steps: int) -> list[Sample]:
    out = []
    for _ in range(steps):
        request = decoder.next().SerializeToString()
        start = time.perf_counter()
        await call.write(request)
        await call.read()
        out.append((time.perf_counter() - start, 0.0))
    return out


def start_reference(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    script = Path(__file__).with_name("hop_servers.py")
    return subprocess.Popen([sys.executable, str(script), args[0], str(port), *args[1:]]), \
        f"127.0.0.1:{port}"


def start_worker(ckpt: Path, executor: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{free_port()}"
    toml = tmp / f"{executor}.toml"
    toml.write_text(
        f'model_dir = "{ckpt}"\nlayer_start = {SPLIT}\ndtype = "float32"\n'
        f'kv_cache_bytes = {KV_CACHE_BYTES}\nlisten = "{address}"\nexecutor = "{executor}"\n'
        f'torch_threads = 1\nrun_dir = "{tmp / executor}"\n')
    log = open(tmp / f"{executor}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "duet.cli", "worker", "--config", str(toml)],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, address


async def wait_ready(address: str, proc: subprocess.Popen) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        for _ in range(1200):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            try:
                await pb_grpc.PipelineStub(channel).Handshake(pb.HandshakeRequest(), timeout=1)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.25)
    raise RuntimeError("worker not ready")


def percentiles(values: list[float]) -> tuple[float, float]:
    """(p50, p99) in µs."""
    q = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values) * 1e6, q[98] * 1e6


async def run(args) -> str:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="duet-bench-"))
    ckpt = write_tiny_model("qwen2", tmp / "ckpt", num_layers=LAYERS)
    tail = TailRunner.load(str(ckpt), SPLIT, dtype="float32", device="cpu",
                           kv_cache_bytes=KV_CACHE_BYTES, block_size=16, idle_timeout_s=3600)
    servers = {"grpc-echo": start_reference("echo"), "noop": start_reference("noop", "0"),
               "noop-busy": start_reference("noop", str(args.busy_s))}
    servers.update({ex: start_worker(ckpt, ex, tmp) for ex in ("local", "triton")})
    try:
        for mode, (proc, address) in servers.items():
            if mode != "grpc-echo":
                await wait_ready(address, proc)
        await asyncio.sleep(1)  # the echo server has no handshake to wait on
        return await measure(args, tail, {mode: addr for mode, (_, addr) in servers.items()})
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)


async def measure(args, tail: TailRunner, addresses: dict[str, str]) -> str:
    channels = {ex: grpc.aio.insecure_channel(a) for ex, a in addresses.items()}
    samples: dict[tuple[str, int], list[Sample]] = {}
    for batch in args.batches:
        calls = {ex: (ch.stream_stream("/bench.Echo/Echo")() if ex == "grpc-echo"
                      else pb_grpc.PipelineStub(ch).Step()) for ex, ch in channels.items()}
        decoders = {ex: Decoder(batch, f"b{batch}") for ex in ("in-process", *calls)}
        per_round = args.steps // args.rounds
        for round_ in range(args.rounds + 1):  # round 0 warms up and is dropped
            n = 20 if round_ == 0 else per_round
            got = {"in-process": time_in_process(tail, decoders["in-process"], n)}
            for ex, call in calls.items():
                timer = time_echo if ex == "grpc-echo" else time_stream
                got[ex] = await timer(call, decoders[ex], n)
            if round_:
                for mode, values in got.items():
                    samples.setdefault((mode, batch), []).extend(values)
        for call in calls.values():
            call.cancel()
    for ch in channels.values():
        await ch.close()
    return report(args, samples)


# (mode, the mode its overhead is compared with, the target)
ROWS = (("in-process", None, ""), ("grpc-echo", None, ""), ("noop", "grpc-echo", ""),
        ("noop-busy", "noop", ""), ("local", "in-process", "≤ 200 µs over in-process"),
        ("triton", "local", "≤ 500 µs over local"))


def report(args, samples) -> str:
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Worker hop latency",
        "",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: `{uname}`, nproc {os.cpu_count()} "
        f"(load average before the run: {args.load_before})  ",
        f"Python {platform.python_version()}, torch {torch.__version__}, torch threads 1  ",
        f"Command: `python bench/worker/hop_latency.py --steps {args.steps} "
        f"--rounds {args.rounds} --busy-s {args.busy_s}`",
        "",
        f"Tiny qwen2 checkpoint (hidden {HIDDEN}, vocab 151936), tail = layers [{SPLIT}, {LAYERS})"
        " + norm + LM head + greedy sampler, float32 on CPU. One decode token per sequence "
        f"per step, {args.steps} steps per mode and batch, modes interleaved in "
        f"{args.rounds} rounds.",
        "",
        "*step* is the wall time the caller saw per step; *overhead* is step minus the tail's "
        "own compute time (`StepReply.worker_compute_s`, timed inside the TailRunner, also "
        "inside Triton), i.e. what the hop itself costs, less sensitive to compute noise.",
        "",
        "| batch | mode | step p50 µs | step p99 µs | overhead p50 µs | overhead p99 µs |"
        " hop adds (p50 overhead) | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch in args.batches:
        overhead = {mode: percentiles([w - c for w, c in values])
                    for (mode, b), values in samples.items() if b == batch}
        for mode, base, target in ROWS:
            step = percentiles([w for w, _ in samples[(mode, batch)]])
            adds = "" if base is None else f"{overhead[mode][0] - overhead[base][0]:.0f} µs over {base}"
            lines.append(f"| {batch} | {mode} | {step[0]:.0f} | {step[1]:.0f} | "
                         f"{overhead[mode][0]:.0f} | {overhead[mode][1]:.0f} | {adds} | {target} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--busy-s", type=float, default=0.005,
                        help="per-step CPU time of the noop-busy reference (default 5 ms)")
    args = parser.parse_args()
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = asyncio.run(run(args))
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
