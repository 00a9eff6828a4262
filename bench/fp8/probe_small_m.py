"""Where a batch-1 V3 MoE layer's time goes, and the few-token expert paths against the sorted one.

One V3 MoE layer (real dimensions, random FP8 checkpoint), native and/or dequantized: the layer
and its MoE block as CUDA graphs at batch 1 and 4 with the few-token paths (engine/moe_gemv.py,
engine/router_select.py) on and off; a per-kernel profile of the batch-1 graph replay (device
time per kernel per step); the FP8 experts at batch 1 through the pairs-mode MMA kernel vs the
streaming GEMV, as CUDA graphs of 10 calls, and both against their torch reference. One JSON,
written after each part. (Its first run, runs/2026-12-02-probe-small-m.json, was made at commit
676d39c, whose engine/wo_gemv.py held a 4-D-tile GEMV for dense FP8 projections too.)

    python -m bench.fp8.probe_small_m --out probe.json [--dir /tmp/v3fp8] [--skip-write] [--modes native]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.fp8 import measure
from bench.fp8.bench_fp8 import FIRST_MOE, V3_CONFIG, free, log
from engine import moe_gemv
from engine.fp8_writer import write_fp8_checkpoint

BATCHES = (1, 4)  # 16 and 64 take the unchanged sorted path (bench_fp8 measures them)


def set_small_m(on: bool) -> None:
    """The few-token paths on (their committed limit) or off (every size sorts by expert)."""
    moe_gemv.MAX_TOKENS = 4 if on else 0


def kernel_profile(stage, batch: int, replays: int = 20) -> list[dict]:
    """Device µs per step of each kernel in `replays` replays of one layer's decode-step graph."""
    from torch.profiler import ProfilerActivity, profile

    runs, release = measure.layer_step(stage, batch)
    with torch.inference_mode():
        graph = measure.capture(runs["layer_ms"])
        graph.replay()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(replays):
                graph.replay()
            torch.cuda.synchronize()
    release()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if us > 0:
            rows.append({"name": e.key[:90], "calls_per_step": e.count / replays,
                         "us_per_step": us / replays})
    return sorted(rows, key=lambda r: -r["us_per_step"])[:40]


def graph_us(fn, calls: int = 10) -> float:
    """µs per call of fn, replayed as one CUDA graph of `calls` calls."""
    return 1e3 * measure.graph_ms(lambda: [fn() for _ in range(calls)]) / calls


def moe_check(stage, tokens: int) -> dict:
    """The few-token experts (pairs-mode MMA, and the streaming GEMV for FP8 stacks) against
    their torch reference and the sorted path, on the layer's own experts and routing."""
    layer = stage.model.model.layers[str(stage.layer_start)]
    ex = layer.mlp.experts
    x = measure.hidden_states(tokens, 9, stage.config.hidden_size)
    out = {"tokens": tokens}
    with torch.inference_mode():
        weights, ids = layer.mlp.gate(x)
        args = (x, weights, ids, ex.gate_up_proj, getattr(ex, "gate_up_proj_scale_inv", None),
                ex.down_proj, getattr(ex, "down_proj_scale_inv", None), ex.num_experts)
        want = moe_gemv.reference_experts(*args)
        set_small_m(False)
        out["sorted_vs_reference"] = measure.rel(ex(x, weights, ids), want)
        set_small_m(True)
        kernels = ("mma", "gemv") if ex.fp8 else ("gemv",)
        for kernel in kernels:
            fn = lambda: moe_gemv.experts(*args, fp8_kernel=kernel)  # noqa: E731
            out[f"{kernel}_vs_reference"] = measure.rel(fn(), want)
            out[f"{kernel}_us"] = graph_us(fn)
    return out


def run_mode(folder: Path, mode: str, results: dict, save) -> None:
    from engine.stage import Stage

    free()
    stage = Stage.load(folder, FIRST_MOE, FIRST_MOE + 1, dtype="bfloat16", device="cuda",
                       fp8=mode, kv_cache_bytes=2 * 2**30)
    r = results.setdefault(mode, {"layer_bytes": measure.layer_bytes(stage)})
    for on in (True, False) if mode == "native" else (True,):  # bf16 before: results.md
        set_small_m(on)
        key = "small_m" if on else "mma_only"
        r[key] = {"graph": {b: measure.graph_layer_ms(stage, b) for b in BATCHES}}
        log(mode, key, r[key]["graph"])
        r[key]["profile_b1"] = kernel_profile(stage, 1)
        save()
    set_small_m(True)
    r["moe_check"] = [moe_check(stage, t) for t in (1, 4)]
    log(mode, r["moe_check"])
    save()
    del stage
    free()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dir", default="/tmp/v3fp8")
    parser.add_argument("--skip-write", action="store_true", help="the checkpoint is in --dir already")
    parser.add_argument("--modes", nargs="+", default=["native", "dequantize"])
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}
    save = lambda: Path(args.out).write_text(json.dumps(results, indent=1, default=str))  # noqa: E731
    results["copy_bytes_per_s"] = measure.copy_rate()
    folder = Path(args.dir) / "v3"
    if not args.skip_write:
        write_fp8_checkpoint(json.loads(V3_CONFIG.read_text()), folder, FIRST_MOE, FIRST_MOE + 1,
                             device="cuda")
        log("written")
    for mode in args.modes:
        try:
            run_mode(folder, mode, results, save)
        except Exception as e:  # noqa: BLE001 - recorded; the other mode still runs
            results[f"{mode}_error"] = f"{type(e).__name__}: {e}"[:400]
            log(mode, "failed", results[f"{mode}_error"])
            save()
    log("done")


if __name__ == "__main__":
    main()
