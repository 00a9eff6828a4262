"""Seeded random weights: the dummy load format and tiny test checkpoints.

Each tensor's values depend only on the seed and its checkpoint name, so a layer gets the same
weights whichever layer range is built, and a split model equals the whole one.
"""
from __future__ import annotations

import zlib

import torch


def tensor_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def fill_random_(target: torch.Tensor, name: str, seed: int) -> None:
    """Fill one tensor with values that keep activations of order one through the layers.

    Matrices: normal with std 1/sqrt(fan_in) (std 1 for the embedding); norm weights:
    1 + small noise; biases and other vectors: small noise.
    """
    gen = torch.Generator(device=target.device).manual_seed(tensor_seed(seed, name))
    values = torch.randn(target.shape, generator=gen, device=target.device, dtype=torch.float32)
    if target.dim() >= 2:
        std = 1.0 if name.endswith("embed_tokens.weight") else target.shape[-1] ** -0.5
        values *= std
    elif name.endswith("norm.weight"):
        values = 1.0 + 0.1 * values
    else:
        values *= 0.1
    target.copy_(values)
