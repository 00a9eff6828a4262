"""results.json of bench_fp8.py -> results.md (tables, targets, the 61-layer extrapolation).

    python -m bench.fp8.render bench/fp8/results.json > bench/fp8/results.md
"""
from __future__ import annotations

import json
import sys

GB = 1e9
MOE_LAYERS, DENSE_LAYERS = 58, 3  # DeepSeek-V3/R1: 61 layers, the first 3 dense


def floor_ms(r: dict, mode: str, batch: str) -> float:
    """Weight bytes one decode step of one MoE layer must read / the measured copy rate."""
    m = r["modes"][mode]
    lb = m["layer_bytes"]
    used = min(m["experts_used"][batch], 256) + 1  # + the shared expert
    return 1e3 * (lb["dense"] + used * lb["per_slot"]) / r["copy_bytes_per_s"]


def decode_table(r: dict, before: dict | None) -> list[str]:
    nat, deq = r["modes"]["native"], r["modes"]["dequantize"]
    layers = nat["layers"]
    rows = ["| batch | experts used | FP8 floor ms | native graph ms | x floor | before graph ms "
            "| bf16 graph ms | bf16 floor ms | bf16 x its floor | bf16 engine ms (eager) "
            "| bf16 engine, graphs | native engine, graphs | bf16 eager / native graph |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in nat["decode"]:
        g_nat, g_deq = nat["graph"][b]["layer_ms"], deq["graph"][b]["layer_ms"]
        e_deq = deq["decode"][b] / layers
        fl = floor_ms(r, "native", b)
        prev = before["modes"]["native"]["graph"][b]["layer_ms"] if before else float("nan")
        eg = [m.get("engine_graphs", {}).get(b, float("nan")) / layers for m in (deq, nat)]
        fl_deq = floor_ms(r, "dequantize", b)
        rows.append(f"| {b} | {nat['experts_used'][b]} | {fl:.3f} | {g_nat:.3f} | {g_nat / fl:.2f} "
                    f"| {prev:.3f} | {g_deq:.3f} | {fl_deq:.3f} | {g_deq / fl_deq:.2f} "
                    f"| {e_deq:.2f} | {eg[0]:.2f} | {eg[1]:.2f} | {e_deq / g_nat:.2f}x |")
    return rows


def extrapolation(r: dict) -> list[str]:
    nat, deq = r["modes"]["native"], r["modes"]["dequantize"]
    head_bytes = 2 * 129280 * 7168 * 2  # bf16 embedding + LM head, as shipped
    dense_native = 583_483_392 * 1.0  # a dense layer's FP8 bytes (params, 1 byte each; ~scales)
    mem_nat = MOE_LAYERS * nat["gpu_bytes_per_layer"] + DENSE_LAYERS * dense_native + head_bytes
    mem_deq = MOE_LAYERS * deq["gpu_bytes_per_layer"] + DENSE_LAYERS * 2 * dense_native + head_bytes
    t1 = nat["graph"]["1"]["layer_ms"]
    t64 = nat["graph"]["64"]["layer_ms"]
    half = 61 / 2
    return [
        f"- Weights, native: 58 x {nat['gpu_bytes_per_layer'] / GB:.2f} GB + 3 dense x "
        f"{dense_native / GB:.2f} GB + embedding and head {head_bytes / GB:.2f} GB = "
        f"**{mem_nat / GB:.0f} GB**; two hosts of 8 x 80 GB hold 1280 GB: "
        f"{1280 - mem_nat / GB:.0f} GB left for KV and activations.",
        f"- Weights, dequantized bf16: 58 x {deq['gpu_bytes_per_layer'] / GB:.2f} GB + 3 x "
        f"{2 * dense_native / GB:.2f} GB + {head_bytes / GB:.2f} GB = **{mem_deq / GB:.0f} GB** "
        f"> 1280 GB: does not fit.",
        f"- Decode, batch 1 (CUDA-graph layer time {t1:.3f} ms, dense layers counted as MoE ones): "
        f"61 x {t1:.3f} = {61 * t1:.1f} ms a token ({1e3 / (61 * t1):.1f} tok/s per sequence) "
        f"plus two hops; each host runs {half:.1f} layers = {half * t1:.1f} ms.",
        f"- Decode, batch 64 per micro-batch, two micro-batches in flight: each host's stage "
        f"takes {half:.1f} x {t64:.3f} = {half * t64:.1f} ms, so the pipeline emits "
        f"64 tokens every {half * t64:.1f} ms = {64e3 / (half * t64):.0f} tok/s.",
        f"- Prefill of 2,000 tokens: {nat['prefill']['ms'] / nat['layers']:.1f} ms a layer x 61 = "
        f"{61 * nat['prefill']['ms'] / nat['layers']:.0f} ms "
        f"({2000e3 / (61 * nat['prefill']['ms'] / nat['layers']):.0f} tok/s).",
    ]


def targets(r: dict) -> list[str]:
    nat, deq = r["modes"]["native"], r["modes"]["dequantize"]
    mem = nat["gpu_bytes_per_layer"] / r["checkpoint_bytes_per_layer"]
    x1 = nat["graph"]["1"]["layer_ms"] / floor_ms(r, "native", "1")
    today64 = deq["decode"]["64"] / deq["layers"]
    x64 = today64 / nat["graph"]["64"]["layer_ms"]
    x64_graph = deq["graph"]["64"]["layer_ms"] / nat["graph"]["64"]["layer_ms"]
    errs = {case: max(v["layer"] for v in per.values()) for case, per in r["accuracy"].items()}
    ok = lambda good: "met" if good else "**missed**"  # noqa: E731
    return [
        f"- GPU memory of an FP8 MoE layer <= 1.05x its checkpoint bytes: {mem:.4f}x, {ok(mem <= 1.05)}.",
        f"- Batch-1 decode of one MoE layer <= 2x its FP8 floor: {x1:.2f}x, {ok(x1 <= 2)}"
        + ("" if x1 <= 2 else f" by {100 * (x1 / 2 - 1):.0f}%") + ".",
        f"- Batch 64 >= 3x today's dequantized-bf16 engine: {x64:.2f}x (its eager step "
        f"{today64:.2f} ms a layer vs the native layer as a CUDA graph); {x64_graph:.2f}x against "
        f"the bf16 layer as a CUDA graph too: {ok(x64 >= 3)}"
        + ("" if x64 >= 3 else f" by {3 / x64:.2f}x") + ".",
        *[f"- Layer output relative error <= 2e-2, {case}: worst {e:.4f}, {ok(e <= 2e-2)}"
          + ("" if e <= 2e-2 else f" by {e / 2e-2:.1f}x") + "." for case, e in errs.items()],
    ]


def kernel_tables(r: dict) -> list[str]:
    """Per-GEMM error and speed of each activation mode, side by side in this run."""
    acts = ("wide", "e4m3", "e4m3x2")
    speed = [k for k in r["kernel_speed"] if "shape" in k]
    if not speed:  # a results.json of version 2 (before the activation modes)
        return legacy_kernel_table(r)
    moe = [k for k in r["kernel_speed"] if "moe_batch" in k]
    fmt = lambda v: f"{v:.0f}" if isinstance(v, float) else "n/a"  # noqa: E731
    return [
        "## Per-GEMM error vs the exact (float64) product of the dequantized weight", "",
        "| M | N | K | outlier channels | bf16 x dequantized bf16 | wide | e4m3 | e4m3x2 |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
        *[f"| {k['m']} | {k['n']} | {k['k']} | {k['outliers']} | {k['bf16_dequantized']:.4f} | "
          + " | ".join(f"{k[a]['vs_exact']:.4f}" for a in acts) + " |"
          for k in r["kernel_check"] if "m" in k], "",
        "## Kernel speed (us; TB/s = FP8 weight bytes / e4m3x2 time)", "",
        "| projection | M | bf16 cuBLAS | wide (v2 decode) | e4m3 | e4m3x2 (now) | TB/s | torch block-scaled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {k['shape']} | {k['m']} | {k['bf16_us']:.0f} | {k['wide_us']:.0f} | {k['e4m3_us']:.0f} "
          f"| {k['e4m3x2_us']:.0f} | {k['weight_bytes'] / k['e4m3x2_us'] / 1e6:.2f} "
          f"| {fmt(k['torch_blockwise_us'])} |" for k in speed], "",
        *[f"torch block-scaled, M = {k['m']}, {k['shape']}: {k['torch_blockwise_us']}"
          for k in speed if not isinstance(k["torch_blockwise_us"], float)][:2], "",
        "| MoE gate_up + down | slots | wide (v2) us | e4m3 us | e4m3x2 us | TB/s (e4m3x2) |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| batch {k['moe_batch']} | {k['slots']} | {k['wide_us']:.0f} | {k['e4m3_us']:.0f} "
          f"| {k['e4m3x2_us']:.0f} | {k['active_weight_bytes'] / k['e4m3x2_us'] / 1e6:.2f} |"
          for k in moe], "",
    ]


def legacy_kernel_table(r: dict) -> list[str]:
    if not r["kernel_speed"]:
        return ["(Per-projection kernel speed: not measured in this run, `--skip-kernel-speed`.)", ""]
    return [
        "## Kernel (one 36864 x 7168 FP8 projection, 264 MB; us)", "",
        "| M | bf16 cuBLAS (528 MB) | FP8, bf16 activations | FP8, e4m3 activations |",
        "|---:|---:|---:|---:|",
        *[f"| {k['m']} | {k['bf16_us']:.0f} | {k['fp8_act0_us']:.0f} | {k['fp8_act1_us']:.0f} |"
          for k in r["kernel_speed"] if "m" in k], "",
    ]


def measured_tables(r: dict) -> list[str]:
    """Accuracy per layer, the kernel's speed and the tiny checkpoint's greedy agreement."""
    return [
        "## Accuracy: each layer's output vs the dequantized layer on the same input", "",
        "| case | layer | layer output rel. error | experts, same routing | tokens routed elsewhere |",
        "|---|---:|---:|---:|---:|",
        *[f"| {case} | {idx} | {v['layer']:.4f} | {v['experts_same_routing']:.4f} | "
          f"{v['tokens_rerouted']:.3f} |" for case, per in r["accuracy"].items()
          for idx, v in per.items()], "",
        *kernel_tables(r),
        "## Tiny FP8 checkpoint: greedy tokens equal of 32 (native vs dequantize)", "",
        "| prompt | bf16 free | bf16 forced | fp32 free | fp32 forced | bf16 vs fp32 dequantize, forced |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {i} | {g['native_vs_dequantize_bf16']['free']} | {g['native_vs_dequantize_bf16']['forced']} "
          f"| {g['native_vs_dequantize_fp32']['free']} | {g['native_vs_dequantize_fp32']['forced']} "
          f"| {g['bf16_vs_fp32_dequantize']['forced']} |" for i, g in enumerate(r["tiny_greedy"])], "",
    ]


def old_vs_new_table(r: dict) -> list[str]:
    """Version 5 vs 6 at <= 4 tokens, the same layer's graph replay alternating in one process."""
    runs = r["modes"]["native"].get("old_vs_new")
    if not runs:
        return []
    rows = ["## Version 5 vs version 6 at batch 1 and 4, side by side", "",
            "Old = the router GEMV's 4 x 512 tile and pairs mode autotuned over the dense configs; "
            "new = `gemv.tile_for` and pairs mode's 2-3 stage configs (bench/fp8/notes.md, "
            "version 6). The layer's decode graph captured anew and replayed (median of 30) for "
            "each entry, old and new alternating.", "",
            "| batch | old ms | new ms | new / old (medians) | FP8 floor ms | old x floor | new x floor |",
            "|---:|---|---|---:|---:|---:|---:|"]
    for b, v in runs.items():
        old, new = sorted(v["old"])[len(v["old"]) // 2], sorted(v["new"])[len(v["new"]) // 2]
        fl = floor_ms(r, "native", b) if b in r["modes"]["native"]["experts_used"] else None
        rows.append(f"| {b} | {', '.join(f'{x:.3f}' for x in v['old'])} | "
                    f"{', '.join(f'{x:.3f}' for x in v['new'])} | {new / old:.3f} | "
                    + (f"{fl:.3f} | {old / fl:.2f} | {new / fl:.2f} |" if fl else "- | - | - |"))
    return rows + [""]


def main(path: str, before_path: str | None = None, before_name: str = "an earlier run") -> None:
    r = json.loads(open(path).read())
    before = json.loads(open(before_path).read()) if before_path else None
    reused = r.get("reused")
    nat, deq = r["modes"]["native"], r["modes"]["dequantize"]
    ck = r["checkpoint_bytes_per_layer"]
    lines = [
        "# FP8-native vs dequantized-bf16 DeepSeek-V3 layers (real dimensions)", "",
        f"Produced by `python -m bench.fp8.bench_fp8 --layers {nat['layers']}` (what "
        "`bench/fp8/run_device.sh` runs first) on a lent GPU machine, rendered by "
        "`python -m bench.fp8.render`. A random FP8 checkpoint of V3's MoE layers from layer 3 "
        "(`engine/fp8_writer.py`: shards + index + `weight_scale_inv`, real "
        f"config) written on the device in {r.get('write_s', 0):.0f} s. Layers written: bounded "
        "by this session's device time and the machine's 64 GiB disk (4 at most), not by the "
        "GPU (a native layer is 11.5 GB: one H200 would hold 11); all figures are per layer.",
        "", f"- date: {r['date']}; device: {r['device']}; torch {r['torch']}; `{r['host']}`",
        f"- copy rate (read + written) measured in this run: {r['copy_bytes_per_s'] / 1e12:.2f} TB/s",
        *([f"- taken from the run of {reused['date']} (`--reuse`, kernels unchanged for them): "
           + ", ".join(reused["parts"])] if reused else []),
        "", "## Memory per MoE layer", "",
        "| | bytes |", "|---|---:|",
        f"| checkpoint shard of one layer | {ck / GB:.3f} GB |",
        f"| native: GPU memory per layer | {nat['gpu_bytes_per_layer'] / GB:.3f} GB "
        f"({nat['gpu_bytes_per_layer'] / ck:.4f}x the checkpoint; target <= 1.05x) |",
        f"| dequantized bf16: GPU memory per layer | {deq['gpu_bytes_per_layer'] / GB:.3f} GB "
        f"({deq['gpu_bytes_per_layer'] / ck:.2f}x) |",
        "", "## Decode, ms per MoE layer", "",
        "Graph = one decoder layer's decode step replayed as a CUDA graph (32-token contexts); "
        "engine = `Stage.forward` step time / layers, eager (host-bound) or with the engine's "
        f"decode graphs (`engine/decode_graphs.py`); before = {before_name}. "
        "Floor = (attention + router + shared bytes + experts used x expert bytes) / copy rate.", "",
        *decode_table(r, before), "",
        *old_vs_new_table(r),
        "## Prefill, one 2,000-token prompt", "",
        f"- native: {nat['prefill']['ms']:.1f} ms for {nat['layers']} layers "
        f"({nat['prefill']['tok_per_s']:.0f} tok/s through them); dequantized bf16: "
        f"{deq['prefill']['ms']:.1f} ms ({deq['prefill']['tok_per_s']:.0f} tok/s)", "",
        *measured_tables(r),
        "## Extrapolation to 61 layers on two hosts", "", *extrapolation(r), "",
        "## Targets (issue 12)", "", *targets(r), "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main(*(sys.argv[1:] or ["bench/fp8/results.json"]))
