"""Kernel-level measurements of bench_fp8.py (CUDA only): correctness, per-GEMM error and speed
of each activation mode, side by side in one run, and torch's own block-scaled `scaled_mm`."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.fp8.measure import events_ms, rel
from engine.fp8 import dequantize_block_fp8, quantize_block_fp8
from engine.fp8_gemm import fp8_matmul, reference_fp8_matmul

H = 7168
ACTS = ("wide", "e4m3", "e4m3x2")  # wide = last session's decode path; e4m3 its prefill path
# V3's projections (out, in): the DESIGN.md 36864 x 7168 one, then one MLA layer's
SHAPES = {"36864x7168": (36864, H), "q_a": (1536, H), "kv_a": (576, H), "q_b": (24576, 1536),
          "o_proj": (H, 16384)}


def _fp8_weight(groups: int, n: int, k: int):
    w = torch.randn(groups, n, k, device="cuda") / k**0.5
    qs = [quantize_block_fp8(w[g]) for g in range(groups)]
    return torch.stack([q for q, _ in qs]), torch.stack([s for _, s in qs])


def kernel_checks() -> list[dict]:
    """Triton vs its torch reference and vs the dequantized product (float64), fresh random
    inputs, each activation mode: the per-GEMM error each mode adds."""
    out = []
    for m, n, k in [(1, 576, 7168), (16, 7168, 2048), (100, 1000, 300), (2000, 4096, 7168)]:
        q, s = _fp8_weight(1, n, k)
        deq = dequantize_block_fp8(q[0], s[0]).double()
        for heavy in (False, True):  # heavy: a few outlier channels, as real hidden states have
            x = torch.randn(m, k, device="cuda")
            if heavy:
                x[:, torch.randperm(k)[: k // 64]] *= 30
            x = x.bfloat16()
            want = F.linear(x.double(), deq)
            row = {"m": m, "n": n, "k": k, "outliers": heavy,
                   "bf16_dequantized": rel(F.linear(x, deq.bfloat16()), want)}
            for act in ACTS:
                got = fp8_matmul(x, q, s, act=act)
                row[act] = {"finite": bool(got.isfinite().all()), "vs_exact": rel(got, want),
                            "vs_reference": rel(got, reference_fp8_matmul(x, q, s, act=act))}
            out.append(row)
    for t in (1, 40, 300):  # grouped: 8 experts + a shared one, gate and up stacked (parts=2)
        q, s = _fp8_weight(2 * 9, 256, 512)
        counts = torch.randint(0, 2 * t, (9,), device="cuda")
        counts[3] = 0
        x = torch.randn(int(counts.sum()), 512, device="cuda", dtype=torch.bfloat16)
        got = fp8_matmul(x, q, s, counts, parts=2)
        out.append({"grouped_rows": x.shape[0], "finite": bool(got.isfinite().all()),
                    "vs_reference": rel(got, reference_fp8_matmul(x, q, s, counts, parts=2))})
    return out


def kernel_speed() -> list[dict]:
    """us per GEMM: bf16 cuBLAS on the dequantized weight vs the FP8 kernel in each mode."""
    out = []
    for name, (n, k) in SHAPES.items():
        q, s = _fp8_weight(1, n, k)
        w16 = dequantize_block_fp8(q[0], s[0]).bfloat16()
        for m in (1, 16, 64, 256, 2000) if name == "36864x7168" else (1, 64):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"shape": name, "m": m, "weight_bytes": q.numel(),
                   "bf16_us": 1e3 * events_ms(lambda: F.linear(x, w16))}
            for act in ACTS:
                row[f"{act}_us"] = 1e3 * events_ms(lambda: fp8_matmul(x, q, s, act=act))
            row["torch_blockwise_us"] = torch_blockwise_us(x, q[0], s[0])
            out.append(row)
        del q, s, w16
    out += moe_speed()
    return out


def moe_speed() -> list[dict]:
    """One V3 MoE layer's gate_up and down over 257 slots, 9 rows on 9 slots (batch 1) and
    576 rows on ~135 slots (batch 64): active weight bytes / time."""
    out = []
    gate_up, down = _fp8_weight(2 * 257, 2048, H), _fp8_weight(257, H, 2048)
    for batch, used in ((1, 8), (64, 134)):
        counts = torch.zeros(257, dtype=torch.long, device="cuda")
        counts[torch.randperm(256)[:used]] = torch.distributions.Multinomial(
            8 * batch, torch.ones(used)).sample().long().cuda()
        counts[256] = batch
        rows = int(counts.sum())
        x = torch.randn(rows, H, device="cuda", dtype=torch.bfloat16)
        h = torch.randn(rows, 2048, device="cuda", dtype=torch.bfloat16)
        row = {"moe_batch": batch, "slots": used + 1,
               "active_weight_bytes": (used + 1) * 3 * 2048 * H}
        for act in ACTS:
            row[f"{act}_us"] = 1e3 * events_ms(lambda: (
                fp8_matmul(x, *gate_up, counts, parts=2, act=act),
                fp8_matmul(h, *down, counts, act=act)))
        out.append(row)
    return out


def torch_blockwise_us(x, q, s) -> float | str:
    """torch's block-scaled scaled_mm (cuBLAS), where this torch has it: us, or why not."""
    scaling = getattr(F, "ScalingType", None)
    if scaling is None or not hasattr(F, "scaled_mm"):
        return "no torch.nn.functional.scaled_mm / ScalingType"
    names = [n for n in dir(scaling) if not n.startswith("_")]
    a_kind = next((getattr(scaling, n) for n in names if n.lower().replace("_", "") == "blockwise1x128"), None)
    b_kind = next((getattr(scaling, n) for n in names if n.lower().replace("_", "") == "blockwise128x128"), None)
    if a_kind is None or b_kind is None:
        return f"ScalingType has {names}"
    from engine.fp8_gemm import quantize_activations

    aq, a_s = quantize_activations(x)
    a_scale = a_s[0].t().contiguous().t()  # column-major [M, K/128]
    errors = []
    for b_scale in (s, s.t()):  # which layout of the weight's scale it wants is not documented
        try:
            return 1e3 * events_ms(lambda: F.scaled_mm(aq[0], q.t(), a_scale, a_kind, b_scale,
                                                       b_kind, output_dtype=torch.bfloat16))
        except Exception as e:  # noqa: BLE001 - recorded: cuBLAS refuses some shapes (M = 1)
            errors.append(f"{type(e).__name__}: {str(e)[:100]}")
    return " | ".join(errors)
