"""Rotary position embeddings: frequencies per rope type, cos/sin per position, two layouts.

Frequencies follow transformers' `modeling_rope_utils` so checkpoints behave as trained.
"""
from __future__ import annotations

import math

import torch

from engine import fused
from engine.errors import CheckpointError


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    # [dim // 2] fp32: theta^(-2i/dim)
    # built on the CPU explicitly: stages are constructed under torch.device("meta")
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (theta**exponents)


def _llama3(rope: dict, inv_freq: torch.Tensor) -> torch.Tensor:
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rope: dict, dim: int, max_pos: int) -> tuple[torch.Tensor, float]:
    theta, orig = rope["rope_theta"], rope["original_max_position_embeddings"]
    factor = rope.get("factor") or max_pos / orig
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all = rope.get("mscale"), rope.get("mscale_all_dim")
        if mscale and mscale_all:  # DeepSeek: the ratio cancels unless the two differ
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast, beta_slow = rope.get("beta_fast") or 32, rope.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    dims = torch.arange(dim // 2, dtype=torch.float32, device="cpu")
    ramp = ((dims - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim)
    keep = 1 - ramp  # share of the unscaled (extrapolated) frequency per dimension
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - keep) + 1.0 / pos_freqs * keep
    return inv_freq, float(attention_factor)


def rope_frequencies(
    rope: dict, dim: int, max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    """inv_freq [dim // 2] fp32 and the factor cos/sin are multiplied by, for a normalized rope.

    `dynamic` uses the frequencies of a max_position_embeddings-long sequence (transformers'
    values for every sequence within it): keys in the cache are rotated once, so they cannot
    follow a per-length rescaling.
    """
    kind, theta = rope["rope_type"], rope["rope_theta"]
    if kind in ("default", "dynamic"):
        return _base_inv_freq(theta, dim), 1.0
    if kind == "linear":
        return _base_inv_freq(theta, dim) / rope["factor"], 1.0
    if kind == "llama3":
        return _llama3(rope, _base_inv_freq(theta, dim)), 1.0
    if kind == "yarn":
        return _yarn(rope, dim, max_position_embeddings)
    raise CheckpointError(
        f"config.json: rope type {kind!r} is not supported (default, linear, dynamic, llama3, yarn)"
    )


class RotaryEmbedding:
    """cos/sin for a step's positions; one per stage, shared by its layers."""

    def __init__(self, rope: dict, dim: int, max_position_embeddings: int):
        self.dim = dim
        self.inv_freq, self.attention_factor = rope_frequencies(rope, dim, max_position_embeddings)
        self._memo: tuple | None = None  # (positions, dtype, cos, sin) of the last step

    def __call__(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, sin [T, dim] in `dtype`; once per step, reused by the layers."""
        memo = self._memo
        if memo is not None and memo[0] is positions and memo[1] == dtype:
            return memo[2], memo[3]
        if self.inv_freq.device != positions.device:  # once: a copy inside a CUDA graph capture fails
            self.inv_freq = self.inv_freq.to(positions.device)
        inv_freq = self.inv_freq
        freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, dim]
        cos = (emb.cos() * self.attention_factor).to(dtype)
        sin = (emb.sin() * self.attention_factor).to(dtype)
        self._memo = (positions, dtype, cos, sin)
        return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split layout (Llama, Qwen2): x [T, heads, dim], cos/sin [T, dim]."""
    if x.shape[0] and fused.usable(x) and cos.stride(-1) == 1 and sin.stride(-1) == 1:
        return fused.rope_half(x, cos, sin)  # one kernel instead of five
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (DeepSeek): x [T, heads, dim] -> rotated, in half-split order.

    The output order differs from the input's; apply it to both queries and keys so their
    dot products are unchanged (as transformers' `apply_rotary_pos_emb_interleave`).
    """
    if x.shape[0] and fused.usable(x) and cos.stride(-1) == 1 and sin.stride(-1) == 1:
        return fused.rope_half(x, cos, sin, interleaved=True)  # one kernel instead of seven
    half = cos.shape[-1] // 2
    cos, sin = cos[:, None, :half], sin[:, None, :half]  # [T, 1, dim / 2]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.cat((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
