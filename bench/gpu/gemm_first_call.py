"""Does a matmul pay on the first call at a new row count (cuBLAS choosing its kernel), and
what removes it? The 7B shape's four weight matmuls (qkv with bias, o with the residual added
in the product, gate/up, down), bf16, at token counts never seen before: first call and the
same count again, each synchronised; then the same under cuBLASLt and with the rows padded to
a multiple of 64 (counts repeat). One layer's worth per count.

    python -m bench.gpu.gemm_first_call --out gemm_first_call.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

H, I, QKV = 3584, 18944, 4608
FRESH = iter(range(131, 4096, 1))  # token counts, each used once per variant


def layer(x: torch.Tensor, w: dict) -> None:
    F.linear(x, w["qkv"], w["bias"])
    x.clone().addmm_(x, w["o"].t())
    gu = F.linear(x, w["gate_up"])
    F.linear(gu[:, :I].contiguous(), w["down"])


def timed(x: torch.Tensor, w: dict) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    layer(x, w)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def sweep(w: dict, counts: list[int], pad: int = 1) -> list[dict]:
    out = []
    for n in counts:
        rows = -(-n // pad) * pad
        x = torch.randn(rows, H, device="cuda", dtype=torch.bfloat16)
        first, again = timed(x, w), timed(x, w)
        out.append({"tokens": n, "rows": rows, "first_ms": first, "again_ms": again})
    return out


def fused_sweep(counts: list[int]) -> list[dict]:
    """The engine's own Triton kernels (rms_norm, silu_mul) at new token counts."""
    from engine.fused import rms_norm, silu_mul
    norm_w = torch.ones(H, device="cuda", dtype=torch.bfloat16)
    out = []
    for n in counts:
        x = torch.randn(n, H, device="cuda", dtype=torch.bfloat16)
        gu = torch.randn(n, 2 * I, device="cuda", dtype=torch.bfloat16)
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            rms_norm(x, norm_w, 1e-6)
            silu_mul(gu[:, :I], gu[:, I:])
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        out.append({"tokens": n, "first_ms": times[0], "again_ms": times[1]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    def rand(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    w = {"qkv": rand(QKV, H), "bias": rand(QKV), "o": rand(H, H), "gate_up": rand(2 * I, H),
         "down": rand(H, I)}
    counts = [200, 333, 457, 613, 901, 1297, 1733, 171, 251, 707, 1103, 1901]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cublas": torch.backends.cuda.preferred_blas_library().name}
    result["warm"] = sweep(w, [128, 512, 2048])  # the first calls of all: one-time costs
    result["default"] = sweep(w, counts)
    result["default_again"] = sweep(w, counts)  # same counts: should be "again" already
    result["pad64"] = sweep(w, [c + 3 for c in counts], pad=64)
    torch.backends.cuda.preferred_blas_library("cublaslt")
    result["cublaslt"] = sweep(w, [c + 5 for c in counts])
    result["triton_norm_silu"] = fused_sweep([c + 7 for c in counts])
    for key in ("default", "default_again", "pad64", "cublaslt", "triton_norm_silu"):
        rows = result[key]
        print(key, "first %.1f ms  again %.1f ms (sum over %d counts)" % (
            sum(r["first_ms"] for r in rows), sum(r["again_ms"] for r in rows), len(rows)))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
