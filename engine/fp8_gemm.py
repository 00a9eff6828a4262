"""Block-scaled FP8 GEMMs: FP8 weights, activations quantized per token per 128 channels on the fly.

One Triton module (engine/fp8_kernels.py) does the dense linear (one group) and the MoE experts
(one group per expert, rows sorted by expert): activations quantized to e4m3 with one scale per
row per 128 channels (DeepSeek's `act_quant`) times FP8 weight tiles on the FP8 tensor cores,
both scales applied per 128-channel step to an fp32 accumulator.
Activation modes (`act`):
  e4m3x2  the default for bf16/fp16: x ~ s1*q1 + s2*q2, q2 the e4m3 quantization of the
          residual x - s1*q1, two FP8 MMAs per step. ~2^-8 relative error per element (bf16's
          own is 2^-9), where one e4m3 term costs ~2.5% per GEMM (3.2% per V3 layer at prefill,
          over the 2e-2 budget: bench/fp8/notes.md). Decode is bound by weight reads, so the
          second MMA is free there; prefill pays it.
  e4m3    DeepSeek's single term (kept for comparison).
  wide    activations in their dtype times the tile widened in registers: fp32 stages (exact
          tests, the fp32 greedy check) multiply in full fp32 ("ieee").
Why not torch: cuBLAS's block-scaled `scaled_mm` (torch 2.11) refuses M = 1 and has no grouped
form (DESIGN.md "FP8 on the H200"). The grid never depends on device values, so a step that
uses it can be captured in a CUDA graph.

Weights are [P, R, K] "parts" (P*R rows) with scales [P, ceil(R/128), ceil(K/128)]: a group owns
`parts` consecutive parts (experts' gate and up stacked: 2 parts of R = I rows each), and its
output column n is row n % R of part n // R. A plain linear is one part of R = out rows.
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from engine.fp8 import FP8_MAX

QUANT_BLOCK = 128  # channels per activation scale and per weight-scale block (DeepSeek's)


@functools.cache
def triton_available() -> bool:
    """The GPU kernels need triton; CPU installs have none and use the reference below."""
    return importlib.util.find_spec("triton") is not None


def block_table(counts: torch.Tensor, block_m: int, num_blocks: int) -> torch.Tensor:
    """[3, num_blocks] int32 (group, first row, end row) of each BLOCK_M tile of rows grouped by
    counts [G]; group -1 past the last tile. Device ops only: no host sync."""
    g = counts.shape[0]
    counts = counts.to(torch.int64)
    tiles = (counts + block_m - 1) // block_m  # [G]
    tile_end = tiles.cumsum(0)  # [G]
    row_start = counts.cumsum(0) - counts  # [G]
    b = torch.arange(num_blocks, device=counts.device)
    group = torch.searchsorted(tile_end, b, right=True)  # [num_blocks], G past the last tile
    valid = group < g
    gc = group.clamp(max=g - 1)
    first = row_start[gc] + (b - (tile_end[gc] - tiles[gc])) * block_m
    end = row_start[gc] + counts[gc]
    return torch.stack([torch.where(valid, gc, -1), first, end]).to(torch.int32)


def max_tiles(rows: int, groups: int, block_m: int) -> int:
    """An upper bound of sum_g ceil(c_g / block_m) over any counts summing to `rows`."""
    return -(-rows // block_m) + min(groups, rows)


ACT_MODES = ("e4m3x2", "e4m3", "wide")


def act_mode(dtype: torch.dtype) -> str:
    """fp32 activations multiply exactly ("wide"); others take two e4m3 terms."""
    return "wide" if dtype == torch.float32 else "e4m3x2"


def act_terms(act: str) -> int:
    """e4m3 terms per activation (0: not quantized)."""
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    return {"e4m3x2": 2, "e4m3": 1, "wide": 0}[act]


def rows_per_group(rows: int, counts: torch.Tensor | None, groups: int) -> float:
    """Rows each weight sees on average (host-side shapes only: no sync)."""
    return rows if counts is None else rows / max(1, min(groups, rows))


def fp8_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    counts: torch.Tensor | None = None,
    parts: int = 1,
    act: str | None = None,
) -> torch.Tensor:
    """x [S, K] (rows grouped by counts [G], or one group) @ each group's FP8 weight^T -> [S, N].

    weight [G*parts, R, K] float8_e4m3fn, scale_inv [G*parts, ceil(R/128), ceil(K/128)] fp32;
    N = parts * R. Triton on CUDA; the same arithmetic in torch elsewhere (tests, CPU).
    act None: `act_mode` of x's dtype.
    """
    act = act or act_mode(x.dtype)
    if x.is_cuda and triton_available():
        from engine.fp8_kernels import fp8_gemm  # imports triton: GPU hosts only

        return fp8_gemm(x, weight, scale_inv, counts, parts, act_terms(act))
    return reference_fp8_matmul(x, weight, scale_inv, counts, parts, act)


def quantize_activations(x: torch.Tensor, terms: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x [S, K] -> (e4m3 [terms, S, K], fp32 scale [terms, S, ceil(K/128)]): one scale per row per
    128 channels; each term after the first quantizes what the earlier ones left."""
    s, k = x.shape
    kb = -(-k // QUANT_BLOCK)
    rest = x.float().new_zeros(s, kb * QUANT_BLOCK)
    rest[:, :k] = x.float()
    qs, scales = [], []
    for _ in range(terms):
        groups = rest.view(s, kb, QUANT_BLOCK)
        scale = groups.abs().amax(-1).clamp(min=1e-12) / FP8_MAX  # [S, KB]
        q = (groups / scale[..., None]).to(torch.float8_e4m3fn)
        rest = (groups - q.float() * scale[..., None]).view(s, -1)
        qs.append(q.view(s, -1)[:, :k])
        scales.append(scale)
    return torch.stack(qs), torch.stack(scales)


def reference_fp8_matmul(x, weight, scale_inv, counts=None, parts: int = 1,
                         act: str | None = None) -> torch.Tensor:
    """The kernel's arithmetic in torch: (fake-quantized) activations times dequantized weights."""
    p, r, k = weight.shape
    groups = p // parts
    terms = act_terms(act or act_mode(x.dtype))
    if terms:
        q, a_scale = quantize_activations(x, terms)  # [T, S, K], [T, S, KB]
        xq = (q.float() * a_scale.repeat_interleave(QUANT_BLOCK, dim=2)[..., :k]).sum(0)
    else:
        xq = x.float()
    w_scale = scale_inv.repeat_interleave(QUANT_BLOCK, 1).repeat_interleave(QUANT_BLOCK, 2)
    w = weight.float() * w_scale[:, :r, :k]  # [P, R, K]
    w = w.view(groups, parts * r, k)  # [G, N, K]
    if counts is None:
        return (xq @ w[0].T).to(x.dtype)
    out = xq.new_empty(x.shape[0], parts * r)
    start = 0
    for g, n in enumerate(counts.tolist()):  # reference only: one matmul per group
        out[start : start + n] = xq[start : start + n] @ w[g].T
        start += n
    return out.to(x.dtype)
