"""Batch-1 products of the 7B shape (the engine's packed matrices): cuBLAS (F.linear) against a
plain Triton GEMV over a few tile shapes, each timed as a CUDA graph of 20 products; weight
bytes per second. Is a hand-written GEMV (and with it a norm or silu·up fused into its
prologue) worth building? Writes JSON.

    python -m bench.gpu.gemv_probe --out gemv.json
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from engine import gemv as engine_gemv

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584),
          "down": (3584, 18944), "lm_head": (152064, 3584)}  # [out, in]
TILES = [(4, 512, 4), (8, 256, 4), (8, 512, 8), (16, 256, 8), (16, 512, 8), (32, 128, 4)]


def gemv(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, tile: tuple[int, int, int]) -> None:
    engine_gemv.launch(w, x, None, y, tile=tile)


def graph_us(fn, repeats: int = 20) -> float:
    """Device µs per call, fn captured `repeats` times in one graph, replayed 10 times."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (10 * repeats)


def probe(n: int, k: int) -> dict:
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(n, device="cuda", dtype=torch.bfloat16)
    want = F.linear(x, w)[0].float()
    gb = w.numel() * 2 / 1e9
    out = {"cublas_us": graph_us(lambda: F.linear(x, w))}
    out["cublas_tb_s"] = gb / out["cublas_us"] * 1e3
    for tile in TILES:
        gemv(w, x[0], y, tile)
        err = float((y.float() - want).norm() / want.norm())
        us = graph_us(lambda: gemv(w, x[0], y, tile))
        out[f"triton_{tile[0]}x{tile[1]}w{tile[2]}"] = {"us": us, "tb_s": gb / us * 1e3, "rel_err": err}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = {}
    for name, (n, k) in SHAPES.items():
        results[name] = probe(n, k)
        print(name, json.dumps(results[name]), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
