"""FP8-native vs dequantized-bf16 stages of DeepSeek-V3 at its real dimensions, side by side.

Writes a random FP8 checkpoint (shards + index + weight_scale_inv, as DeepSeek ships) of a few
MoE layers of the real V3 config, loads it both ways and measures, in one run: GPU memory per
MoE layer, decode ms per layer at several batch sizes (engine step and CUDA-graph replay),
prefill tok/s for a 2,000-token prompt, each layer's output error vs the dequantized layer on
the same input, and the floor (active weight bytes / the copy rate measured here). Also checks
the Triton kernel against its torch reference and compares greedy tokens of the tiny FP8
checkpoint. One JSON file; `render.py` turns it into results.md.

    python -m bench.fp8.bench_fp8 --out results.json --dir /tmp/v3fp8 [--layers 3]
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from bench.fp8 import accuracy, kernels, measure, tiny_greedy
from engine.fp8_writer import write_fp8_checkpoint

V3_CONFIG = Path(__file__).parents[2] / "tests" / "fixtures" / "deepseek_v3_config.json"
FIRST_MOE = 3  # V3's layers 0-2 are dense
BATCHES = (1, 16, 64, 256)


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def layers_that_fit(folder: Path, wanted: int, layer_bytes: float) -> int:
    """As many MoE layers as the disk holds (keeping 6 GB spare), at most `wanted`."""
    folder.mkdir(parents=True, exist_ok=True)
    free_bytes = shutil.disk_usage(folder).free - 6e9
    return max(1, min(wanted, int(free_bytes // layer_bytes)))


def run_mode(folder: Path, mode: str, layers: int, cases: dict, feed: dict | None) -> dict:
    from engine.stage import Stage

    free()
    before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    stage = Stage.load(folder, FIRST_MOE, FIRST_MOE + layers, dtype="bfloat16", device="cuda",
                       fp8=mode, kv_cache_bytes=2 * 2**30)
    load_s = time.perf_counter() - t0
    kv_bytes = sum(t.numel() * t.element_size() for kv in stage.kv.layers.values() for t in kv)
    out = {
        "mode": mode, "layers": layers, "load_s": load_s,
        "gpu_bytes_per_layer": (torch.cuda.memory_allocated() - before - kv_bytes) / layers,
        "weight_bytes_per_layer": stage.weight_bytes() / layers,
        "layer_bytes": measure.layer_bytes(stage),
    }
    log(mode, "loaded", {k: v for k, v in out.items() if k != "layer_bytes"})
    out["accuracy_capture"] = accuracy.capture_layers(stage, cases, feed)
    out["decode"] = {b: measure.decode_ms(stage, b) for b in BATCHES}
    print(measure.profile_decode(stage), flush=True)
    log(mode, "decode", out["decode"])
    out["graph"] = {b: measure.graph_layer_ms(stage, b) for b in BATCHES}
    log(mode, "graph", out["graph"])
    if mode == "native":
        out["old_vs_new"] = measure.old_vs_new_ms(stage)
        log(mode, "old vs new", out["old_vs_new"])
    out["prefill"] = measure.prefill(stage, 2000)
    log(mode, "prefill", out["prefill"])
    stage.enable_decode_graphs(max(BATCHES))  # the engine's own decode graphs (engine/decode_graphs.py)
    out["engine_graphs"] = {b: measure.decode_ms(stage, b) for b in BATCHES}
    out["engine_graphs_error"] = stage.decode_graphs.capture_error
    log(mode, "engine graphs", out["engine_graphs"], out["engine_graphs_error"])
    out["experts_used"] = {b: measure.experts_used(stage, b) for b in BATCHES}
    del stage
    free()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dir", default="/tmp/v3fp8")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--skip-write", action="store_true")
    parser.add_argument("--skip-kernel-speed", action="store_true",
                        help="no per-projection kernel table (each new shape x mode compiles: ~1-2 min)")
    parser.add_argument("--reuse", metavar="JSON",
                        help="take kernel_check and tiny_greedy from an earlier results.json (~90 s "
                             "of compiles on the device) instead of measuring them")
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
               "host": platform.platform(), "torch": torch.__version__}
    save = lambda: Path(args.out).write_text(json.dumps(results, indent=1, default=str))  # noqa: E731
    results["copy_bytes_per_s"] = measure.copy_rate()
    log("copy rate", results["copy_bytes_per_s"] / 1e12, "TB/s")
    if args.reuse:
        earlier = json.loads(Path(args.reuse).read_text())
        results.update({k: earlier[k] for k in ("kernel_check", "tiny_greedy")},
                       reused={"from": args.reuse, "date": earlier["date"],
                               "parts": ["kernel_check", "tiny_greedy"]})
    else:
        results["kernel_check"] = kernels.kernel_checks()
        log("kernel check", results["kernel_check"])
        results["tiny_greedy"] = tiny_greedy.tiny_greedy(Path(args.dir) / "tiny")
        log("tiny greedy", results["tiny_greedy"])
    results["kernel_speed"] = [] if args.skip_kernel_speed else kernels.kernel_speed()
    log("kernel speed", results["kernel_speed"])
    save()
    folder = Path(args.dir) / "v3"
    layers = layers_that_fit(folder, args.layers, 11.6e9)
    if not args.skip_write:
        t0 = time.perf_counter()
        write_fp8_checkpoint(json.loads(V3_CONFIG.read_text()), folder, FIRST_MOE,
                             FIRST_MOE + layers, device="cuda")
        results["write_s"] = time.perf_counter() - t0
        log("wrote", layers, "layers in", results["write_s"])
    results["checkpoint_bytes_per_layer"] = measure.checkpoint_layer_bytes(folder, FIRST_MOE)
    inputs = accuracy.accuracy_inputs()
    native = run_mode(folder, "native", layers, inputs, None)
    results["modes"] = {"native": {k: v for k, v in native.items() if k != "accuracy_capture"}}
    save()
    dequant = run_mode(folder, "dequantize", layers, inputs, native["accuracy_capture"])
    results["accuracy"] = accuracy.compare_layers(native.pop("accuracy_capture"),
                                                 dequant.pop("accuracy_capture"))
    log("accuracy", results["accuracy"])
    results["modes"] = {"native": native, "dequantize": dequant}
    save()
    log("done")


if __name__ == "__main__":
    main()
