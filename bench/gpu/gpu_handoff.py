"""What one GPU shared by two processes costs a batch-1 pipeline step: the hand-off.

In the benchmark's two-stage pipeline both stages' processes use the one GPU, one after the
other at batch 1: the head's kernels, then (after a socket hop) the tail's, then the head's
again. A GPU runs one process's context at a time, so each turn may pay a switch of context
that two hosts (the deployment) never pay. This measures it, with a kernel of fixed length
(torch.cuda._sleep) instead of the model:

- `one process`: kernel, wait for it, send a byte over a pipe to a second process and back (no
  GPU work there): a turn = kernel + wait + pipe round trip;
- `two processes`: the same, but the second process runs the same kernel and waits before it
  answers: a turn = two kernels + two waits + the pipe round trip.

The switch cost per hand-off = (two processes − one process − one more kernel and wait) / 2,
where "one more kernel and wait" is measured in the first process alone.

    python -m bench.gpu.gpu_handoff [--kernel-us 200] [--turns 400] [--out handoff.json]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time

import torch

CYCLES_PER_US = 1980  # the H200's SM clock under load (KINDS.md): _sleep counts cycles


def _kernel(cycles: int) -> None:
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()


def _peer(conn, cycles: int) -> None:
    """The second process: answer each byte, after a kernel when cycles > 0."""
    torch.zeros(1, device="cuda")  # its context exists before the timing starts
    conn.send(b"ready")
    while (msg := conn.recv()) != b"stop":
        if cycles and msg == b"gpu":
            _kernel(cycles)
        conn.send(msg)


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def turns(conn, cycles: int, n: int, peer_gpu: bool) -> float:
    """Median µs of: kernel here, then a pipe round trip (with the peer's kernel or not)."""
    msg = b"gpu" if peer_gpu else b"cpu"
    out = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        _kernel(cycles)
        conn.send(msg)
        conn.recv()
        if i >= 20:  # warm-up turns left out
            out.append(time.perf_counter() - t0)
    return _median_us(out)


def alone(cycles: int, n: int) -> float:
    out = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        _kernel(cycles)
        if i >= 20:
            out.append(time.perf_counter() - t0)
    return _median_us(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel-us", type=float, default=200.0)
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    cycles = int(args.kernel_us * CYCLES_PER_US)
    torch.zeros(1, device="cuda")
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    peer = ctx.Process(target=_peer, args=(there, cycles), daemon=True)
    peer.start()
    assert here.recv() == b"ready"
    kernel_wait = alone(cycles, args.turns)
    # alternate the two modes in rounds, so that a drift of the machine touches both alike
    one, two = [], []
    for _ in range(4):
        one.append(turns(here, cycles, args.turns // 4, peer_gpu=False))
        two.append(turns(here, cycles, args.turns // 4, peer_gpu=True))
    here.send(b"stop")
    peer.join(10)
    one_us, two_us = statistics.median(one), statistics.median(two)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": torch.cuda.get_device_name(0), "kernel_us": args.kernel_us,
              "kernel_and_wait_us": kernel_wait, "turn_peer_cpu_us": one_us,
              "turn_peer_gpu_us": two_us,
              "switch_us_per_handoff": (two_us - one_us - kernel_wait) / 2}
    print(json.dumps(result), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
