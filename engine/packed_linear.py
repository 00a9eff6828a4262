"""Sibling projections that read the same input, multiplied as one matrix.

At batch 1 a decode step is a chain of matrix-vector products, and each costs a launch and a
tail on the device whatever its size: q/k/v are three (k and v small: 3584 x 512 on the 7B
shape), gate/up two. Packing makes them one product each. The siblings' weights become
row blocks (views) of one tensor, so parameter names, loading (a copy into each view) and the
unpacked forward stay exactly as they were:

    packed weight [sum(out_i), in] = rows [q | k | v]  (q_proj, k_proj, v_proj)
                                   = rows [gate | up]  (gate_proj, up_proj)
                                   = rows [q_a | kv_a] (q_a_proj, kv_a_proj_with_mqa, MLA)
    packed bias   [sum(out_i)]     = the biases in the same order, when the siblings have them

A tensor-parallel rank that shards each sibling by output rows packs its own shards the same
way ([q_r | k_r | v_r]); a packed weight splits back per sibling at the offsets of `sizes`.
Plain nn.Linear siblings of one dtype and device pack; so do FP8 linears (q_a and kv_a of MLA
in native FP8: one activation quantization and one GEMM instead of two each) whose row blocks
of 128 do not straddle two siblings, with their block scales packed the same way.
Replacing a sibling's weight after packing would leave the packed tensor stale: pack last.
"""
from __future__ import annotations

import torch
from torch import nn

from engine import gemv
from engine.fp8_gemm import QUANT_BLOCK

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"),
          ("q_a_proj", "kv_a_proj_with_mqa"))


class PackedLinear:
    """One weight [sum(sizes), in] (and bias) whose row blocks are the siblings' parameters."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int],
                 scale_inv: torch.Tensor | None = None):
        self.weight, self.bias, self.sizes, self.scale_inv = weight, bias, sizes, scale_inv

    def __call__(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        """x [T, in] -> [T, sum(sizes)] (the siblings' outputs side by side)."""
        bias = self.bias if with_bias else None
        if self.scale_inv is None:
            return gemv.linear(x, self.weight, bias)
        from engine.fp8_gemm import fp8_matmul

        out = fp8_matmul(x, self.weight[None], self.scale_inv[None])
        return out if bias is None else out + bias

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [T, in] -> each sibling's output [T, out_i] (views of one product)."""
        return self(x).split(self.sizes, dim=-1)


def packed(module: nn.Module, first: str) -> PackedLinear | None:
    """The PackedLinear of `module`'s group starting with sibling `first`, if it was packed."""
    return module.__dict__.get(f"packed_{first}")


def _packable(linears: list[nn.Module]) -> bool:
    from engine.fp8_native import FP8Linear

    fp8 = all(type(m) is FP8Linear for m in linears)
    if fp8 and any(m.out_features % QUANT_BLOCK for m in linears[:-1]):
        return False  # a 128-row scale block would straddle two siblings
    if not (fp8 or all(type(m) is nn.Linear for m in linears)):
        return False
    w0 = linears[0].weight
    return all(m.weight.dtype == w0.dtype and m.weight.device == w0.device
               and m.in_features == linears[0].in_features
               and (m.bias is None) == (linears[0].bias is None) for m in linears)


@torch.no_grad()
def _pack(parent: nn.Module, names: tuple[str, ...]) -> None:
    linears = [getattr(parent, n) for n in names]
    sizes = [m.out_features for m in linears]
    w0 = linears[0].weight
    weight = torch.empty(sum(sizes), w0.shape[1], dtype=w0.dtype, device=w0.device)
    has_bias = linears[0].bias is not None
    bias = (torch.empty(sum(sizes), dtype=linears[0].bias.dtype, device=w0.device)
            if has_bias else None)
    start = 0
    for m, size in zip(linears, sizes):  # the old contents come along (loaded or not)
        weight[start:start + size].copy_(m.weight)
        m.weight = nn.Parameter(weight[start:start + size], requires_grad=False)
        if has_bias:
            bias[start:start + size].copy_(m.bias)
            m.bias = nn.Parameter(bias[start:start + size], requires_grad=False)
        start += size
    scale = _pack_scales(linears) if hasattr(linears[0], "weight_scale_inv") else None
    parent.__dict__[f"packed_{names[0]}"] = PackedLinear(weight, bias, sizes, scale)  # not a submodule


def _pack_scales(linears: list[nn.Module]) -> torch.Tensor:
    """FP8 siblings' block scales [sum(ceil(out_i/128)), ceil(in/128)], their rows as views."""
    scales = [m.weight_scale_inv for m in linears]
    packed_scale = torch.cat([t.detach() for t in scales])
    start = 0
    for m, t in zip(linears, scales):
        m.weight_scale_inv = nn.Parameter(packed_scale[start:start + t.shape[0]], requires_grad=False)
        start += t.shape[0]
    return packed_scale


def pack_linears(model: nn.Module) -> int:
    """Pack every group of GROUPS found as children of one module; the number packed."""
    count = 0
    for parent in list(model.modules()):
        for names in GROUPS:
            if all(isinstance(getattr(parent, n, None), nn.Module) for n in names):
                if _packable([getattr(parent, n) for n in names]):
                    _pack(parent, names)
                    count += 1
    return count
