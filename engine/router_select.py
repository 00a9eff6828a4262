"""DeepSeek-V3's expert choice (`noaux_tc`) for a few tokens as one kernel after the router GEMV.

In torch the choice is ~14 small kernels (sigmoid, bias, two top-ks per group, group top-k,
scatter, mask, expert top-k, gather, normalise, scale); in a batch-1 decode graph each costs
a launch slot (~2 µs) while the work is 256 numbers a token. Here one program per token does it
all in registers, and the router logits come from engine/gemv.py's GEMV, one launch a token
(bf16 weight, fp32 products and sums, as `F.linear(x.float(), w.float())`). Same rules as engine/models/moe.py's
Router: sigmoid scores; choice = scores + e_score_correction_bias; groups ranked by the sum of
their two best choices; top-k experts of the best `topk_groups` groups; weights = the unbiased
scores, optionally normalised, times routed_scaling_factor.
"""
from __future__ import annotations

import torch

from engine import gemv, moe_gemv
from engine.moe_gemv import triton

if triton is not None:
    import triton.language as tl

SHORT_TILE = True  # the router GEMV through gemv.tile_for (False: the 4 x 512 tile; bench/fp8 compares)


def usable(x: torch.Tensor, router) -> bool:
    """A few bf16 tokens on CUDA through a noaux_tc router of power-of-two sizes."""
    s = router.spec
    per_group = s.num_experts // s.num_groups
    return (s.method == "noaux_tc" and moe_gemv.usable(x, router.weight)
            and gemv.usable(x[:1], router.weight) and all(v & (v - 1) == 0 for v in (s.num_experts, s.num_groups, per_group, s.top_k))
            and per_group >= 2)


def route(x: torch.Tensor, router) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, H] -> (weights [T, K] fp32, expert ids [T, K] long), as Router.forward."""
    s = router.spec
    t = x.shape[0]
    logits = torch.empty(t, s.num_experts, dtype=torch.float32, device=x.device)
    tile = gemv.tile_for(*router.weight.shape) if SHORT_TILE else (gemv.BLOCK_N, gemv.BLOCK_K, gemv.WARPS)
    for i in range(t):  # fp32 products and sums of the bf16 values, as F.linear in fp32
        gemv.launch(router.weight, x[i], None, logits[i], tile=tile)
    weights = torch.empty(t, s.top_k, dtype=torch.float32, device=x.device)
    ids = torch.empty(t, s.top_k, dtype=torch.int64, device=x.device)
    _noaux_tc_kernel[(t,)](logits, router.e_score_correction_bias, weights, ids,
                           s.routed_scaling_factor, E=s.num_experts, G=s.num_groups,
                           TOPK_GROUPS=s.topk_groups, K=s.top_k, NORM=s.norm_topk_prob,
                           num_warps=1)  # 256 scores: one warp, reductions by shuffles alone
    return weights, ids


if triton is not None:

    @triton.jit
    def _noaux_tc_kernel(L, BIAS, W, IDS, scale, E: tl.constexpr, G: tl.constexpr,
                         TOPK_GROUPS: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        e = tl.arange(0, E)
        scores = tl.sigmoid(tl.load(L + t * E + e))
        choice = tl.reshape(scores + tl.load(BIAS + e), [G, E // G])
        col = tl.arange(0, E // G)[None, :]
        best = tl.argmax(choice, axis=1)  # [G]
        second = tl.max(tl.where(col == best[:, None], float("-inf"), choice), axis=1)
        group_score = tl.max(choice, axis=1) + second  # [G] sum of the best two
        g = tl.arange(0, G)
        keep = g < 0
        for _ in tl.static_range(TOPK_GROUPS):  # the best groups, one at a time
            top = tl.argmax(group_score, axis=0)
            keep = keep | (g == top)
            group_score = tl.where(g == top, float("-inf"), group_score)
        masked = tl.reshape(tl.where(keep[:, None], choice, float("-inf")), [E])
        k = tl.arange(0, K)
        chosen = k * 0
        wts = tl.zeros([K], tl.float32)
        for j in tl.static_range(K):  # the best experts, one at a time
            top = tl.argmax(masked, axis=0)
            chosen = tl.where(k == j, top, chosen)
            wts = tl.where(k == j, tl.sum(tl.where(e == top, scores, 0.0), axis=0), wts)
            masked = tl.where(e == top, float("-inf"), masked)
        if NORM:
            wts = wts / (tl.sum(wts, axis=0) + 1e-20)
        tl.store(W + t * K + k, wts * scale)
        tl.store(IDS + t * K + k, chosen.to(tl.int64))
