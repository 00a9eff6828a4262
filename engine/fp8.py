"""Block-wise FP8 (e4m3) weights as DeepSeek-V3/R1 ship them: one fp32 scale per 128x128 block.

A checkpoint stores `w` as float8_e4m3fn plus `w_scale_inv` of shape [ceil(out/128), ceil(in/128)];
the real weight is `w.float() * scale_inv` broadcast over each block. Edge blocks may be partial.
"""
from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0
Block = tuple[int, int]


def _num_blocks(shape: torch.Size, block: Block) -> tuple[int, int]:
    return -(-shape[0] // block[0]), -(-shape[1] // block[1])


def _expand_blocks(scale: torch.Tensor, shape: torch.Size, block: Block) -> torch.Tensor:
    """scale [ob, ib] -> [out, in]: each block's value repeated over its (possibly partial) block."""
    full = scale.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    return full[: shape[0], : shape[1]]


def quantize_block_fp8(
    weight: torch.Tensor, block: Block = (128, 128)
) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] -> (float8_e4m3fn [out, in], fp32 scale_inv [ceil(out/b0), ceil(in/b1)])."""
    if weight.dim() != 2:
        raise ValueError(f"block FP8 needs a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.float()
    ob, ib = _num_blocks(w.shape, block)
    padded = w.new_zeros(ob * block[0], ib * block[1])
    padded[: w.shape[0], : w.shape[1]] = w
    # [ob, b0, ib, b1] -> per-block absolute max [ob, ib]
    amax = padded.view(ob, block[0], ib, block[1]).abs().amax(dim=(1, 3))
    scale_inv = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (w / _expand_blocks(scale_inv, w.shape, block)).clamp(-FP8_MAX, FP8_MAX)
    return q.to(FP8_DTYPE), scale_inv


def dequantize_block_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: Block = (128, 128)
) -> torch.Tensor:
    """FP8 weight [out, in] and scale_inv [ceil(out/b0), ceil(in/b1)] -> fp32 weight [out, in]."""
    if weight.dim() != 2:
        raise ValueError(f"block FP8 needs a 2-D weight, got shape {tuple(weight.shape)}")
    expected = _num_blocks(weight.shape, block)
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"scale_inv has shape {tuple(scale_inv.shape)}, expected {expected} for a weight of "
            f"shape {tuple(weight.shape)} in {block[0]}x{block[1]} blocks"
        )
    return weight.float() * _expand_blocks(scale_inv.float(), weight.shape, block)
