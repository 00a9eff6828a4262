"""Where the prefill error comes from, on the CPU: one V3-shaped MoE layer, native vs dequantized.

The native GEMMs run as their torch reference (`engine.fp8_gemm.reference_fp8_matmul`: the
kernel's arithmetic, sums in another order), so the activation modes can be compared without a
GPU. V3's attention and hidden sizes are real; the experts are fewer and narrower (32 routed of
512 channels, top 8 of 8 groups, 4 groups kept) so that the layer fits a small host.

    python -m bench.fp8.accuracy_cpu --out bench/fp8/accuracy_cpu.json [--tokens 512]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

import engine.fp8_gemm
import engine.stage
from bench.fp8 import accuracy, measure
from bench.fp8.bench_fp8 import FIRST_MOE, V3_CONFIG
from engine.batch import SeqChunk
from engine.fp8_writer import write_fp8_checkpoint

SMALLER_EXPERTS = {"n_routed_experts": 32, "moe_intermediate_size": 512}


def run(folder: Path, mode: str, act: str | None, cases: dict, feed: dict | None) -> dict:
    """Capture each layer's input and output with fp8 `mode`; native GEMMs in activation `act`."""
    forced_mode = lambda requested, device, block: (requested, "bench: the kernel's torch reference")  # noqa: E731
    acts = (lambda dtype: act) if act else engine.fp8_gemm.act_mode
    with mock.patch.object(engine.stage, "fp8_mode", forced_mode), \
            mock.patch.object(engine.fp8_gemm, "act_mode", acts):
        stage = engine.stage.Stage.load(folder, FIRST_MOE, FIRST_MOE + 1, dtype="bfloat16",
                                        fp8=mode, kv_cache_bytes=2**28)
        return accuracy.capture_layers(stage, cases, feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dir", default="/tmp/v3fp8_cpu")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    measure.DEVICE = "cpu"
    config = json.loads(V3_CONFIG.read_text()) | SMALLER_EXPERTS
    folder = Path(args.dir)
    if not (folder / "config.json").exists():
        write_fp8_checkpoint(config, folder, FIRST_MOE, FIRST_MOE + 1)
    cases = {f"prefill_{args.tokens}": [((SeqChunk("acc", 0, args.tokens),), 20)],
             "decode_64": accuracy.accuracy_inputs()["decode_64"]}
    results = {"date": time.strftime("%Y-%m-%d"), "config": SMALLER_EXPERTS, "tokens": args.tokens}
    deq = run(folder, "dequantize", None, cases, None)
    for act in ("e4m3", "e4m3x2", "wide"):  # wide: bf16 activations (version 2's decode path)
        t0 = time.perf_counter()
        native = run(folder, "native", act, cases, deq)
        results[act] = accuracy.compare_layers(native, deq)
        results[act + "_s"] = time.perf_counter() - t0
        print(act, results[act], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
