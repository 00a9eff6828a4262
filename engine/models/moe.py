"""DeepSeek mixture of experts: a router picks top-k routed experts per token; shared experts see all.

Routing methods (DeepSeek-V2 / V3 configs):
  greedy                softmax scores, plain top-k
  group_limited_greedy  softmax scores, top-k inside the `topk_group` groups with the best max score
  noaux_tc              sigmoid scores; choice adds `e_score_correction_bias`, groups ranked by the
                        sum of their two best biased scores; weights are the unbiased scores
Then optionally normalised to sum to one (`norm_topk_prob`), then scaled by `routed_scaling_factor`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import moe_gemv, router_select
from engine.models.llama import LlamaMLP

ROUTING_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")


@dataclass(frozen=True)
class MoESpec:
    """The shape and routing of one MoE block, read from the model config."""

    hidden_size: int
    num_experts: int
    top_k: int
    expert_intermediate_size: int
    num_shared_experts: int
    method: str
    num_groups: int = 1
    topk_groups: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    first_expert: int = 0  # expert parallel: this rank holds experts [first, first + num_experts)

    @property
    def fuse_shared(self) -> bool:
        """One shared expert is an expert of the same shape: it joins the grouped GEMMs."""
        return self.num_shared_experts == 1

    def __post_init__(self):
        if self.method not in ROUTING_METHODS:
            raise ValueError(f"topk_method must be one of {ROUTING_METHODS}, got {self.method!r}")
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"num_experts_per_tok must be in [1, {self.num_experts}], got {self.top_k}")
        if self.num_groups < 1 or self.num_experts % self.num_groups:
            raise ValueError(f"n_group ({self.num_groups}) must divide n_routed_experts ({self.num_experts})")
        if not 0 < self.topk_groups <= self.num_groups:
            raise ValueError(f"topk_group must be in [1, n_group={self.num_groups}], got {self.topk_groups}")
        per_group = self.num_experts // self.num_groups
        if self.top_k > self.topk_groups * per_group:
            raise ValueError(f"num_experts_per_tok ({self.top_k}) exceeds the experts of topk_group groups")
        if self.method == "noaux_tc" and self.num_groups > 1 and per_group < 2:
            raise ValueError("noaux_tc ranks groups by their best two experts: n_group leaves fewer")


class Router(nn.Module):
    """Chooses each token's experts and their weights (computed in fp32)."""

    def __init__(self, spec: MoESpec):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.num_experts, spec.hidden_size))
        if spec.method == "noaux_tc":  # a buffer: loaded like a weight, but not a trained one
            self.register_buffer("e_score_correction_bias", torch.zeros(spec.num_experts))

    def _apply(self, fn, recurse=True):
        """Casting the model (to bf16, ...) leaves the correction bias fp32, as DeepSeek's and
        vLLM's code keep it: rounding it would move experts' ranks among near-equal scores."""
        super()._apply(fn, recurse)
        bias = getattr(self, "e_score_correction_bias", None)
        if bias is not None and bias.dtype != torch.float32:
            self.e_score_correction_bias = bias.float()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> (weights [T, K] fp32, expert ids [T, K] long)."""
        if router_select.usable(x, self):  # a few tokens: the GEMV and one selection kernel
            return router_select.route(x, self)
        s = self.spec
        logits = F.linear(x.float(), self.weight.float())  # [T, E]
        if s.method == "noaux_tc":
            scores = logits.sigmoid()
            choice = scores + self.e_score_correction_bias.float()
            choice = self._limit_groups(choice, _sum_of_best_two, float("-inf"))
        else:
            scores = choice = logits.softmax(dim=-1)
            if s.method == "group_limited_greedy":
                choice = self._limit_groups(choice, _best_one, 0.0)
        ids = choice.topk(s.top_k, dim=-1, sorted=False)[1]  # [T, K]
        weights = scores.gather(1, ids)
        if s.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * s.routed_scaling_factor, ids

    def _limit_groups(self, choice: torch.Tensor, group_score, fill: float) -> torch.Tensor:
        """Keep only the experts of each token's best `topk_groups` groups; others get `fill`."""
        s = self.spec
        if s.num_groups == 1:
            return choice
        grouped = choice.view(-1, s.num_groups, s.num_experts // s.num_groups)  # [T, G, E/G]
        group_scores = group_score(grouped)  # [T, G]
        best = group_scores.topk(s.topk_groups, dim=-1, sorted=False)[1]  # [T, topk_groups]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~keep.unsqueeze(-1), fill).view_as(choice)


def _sum_of_best_two(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.topk(2, dim=-1)[0].sum(dim=-1)


def _best_one(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.amax(dim=-1)


class Experts(nn.Module):
    """The routed experts (and a fused shared expert), stacked so that a step is two grouped GEMMs.

    gate_up_proj is [2S, I, H] for S slots: rows 2e and 2e + 1 are slot e's gate_proj and up_proj,
    so that the checkpoint's per-expert tensors stack into it and it reads as [S, 2I, H]. Slots
    [0, E) are the routed experts; with `fuse_shared`, slot E is the shared expert, which every
    token visits with weight 1 (one GEMM pair for all, instead of three more launches). After
    `use_fp8` the stacks are e4m3 with `*_scale_inv` block scales, as the checkpoint stores them.
    """

    fp8_probe = "gate_up_proj"  # the parameter whose checkpoint tensors say "FP8 or not"

    def __init__(self, spec: MoESpec):
        super().__init__()
        e, h, i = spec.num_experts, spec.hidden_size, spec.expert_intermediate_size
        self.num_experts = e
        self.num_slots = e + int(spec.fuse_shared)
        self.gate_up_proj = nn.Parameter(torch.empty(2 * self.num_slots, i, h))
        self.down_proj = nn.Parameter(torch.empty(self.num_slots, h, i))
        self.fp8 = False

    def use_fp8(self) -> None:
        """Hold the stacks as e4m3 + block scales (call on the meta-built model, before loading)."""
        from engine.fp8_native import fp8_parameter, scale_parameter

        self.fp8 = True
        with torch.device(self.down_proj.device):
            self.gate_up_proj = fp8_parameter(*self.gate_up_proj.shape)
            self.gate_up_proj_scale_inv = scale_parameter(*self.gate_up_proj.shape)
            self.down_proj = fp8_parameter(*self.down_proj.shape)
            self.down_proj_scale_inv = scale_parameter(*self.down_proj.shape)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.fp8:
            from engine.fp8_native import keep_dtypes_

            keep_dtypes_(self, {"gate_up_proj": torch.float8_e4m3fn, "down_proj": torch.float8_e4m3fn,
                                "gate_up_proj_scale_inv": torch.float32,
                                "down_proj_scale_inv": torch.float32})
        return self

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [T, H], weights/ids [T, K] -> sum over k of weight * expert(x) [T, H] (+ shared)."""
        if moe_gemv.usable(x, self.gate_up_proj):  # a few tokens: two launches, no sorting
            return moe_gemv.experts(
                x, weights, ids, self.gate_up_proj, getattr(self, "gate_up_proj_scale_inv", None),
                self.down_proj, getattr(self, "down_proj_scale_inv", None),
                self.num_experts if self.num_slots > self.num_experts else None)
        if self.num_slots > self.num_experts:  # the shared expert as one more choice, weight 1
            ids = torch.cat([ids, ids.new_full((ids.shape[0], 1), self.num_experts)], dim=1)
            weights = torch.cat([weights, weights.new_ones(weights.shape[0], 1)], dim=1)
        t, k = ids.shape
        flat = ids.flatten()  # [T*K]
        order = flat.argsort()  # (token, k) pairs grouped by expert
        # rows per slot [S]; scatter_add_, not bincount, which syncs with the host on CUDA
        counts = flat.new_zeros(self.num_slots).scatter_add_(0, flat, torch.ones_like(flat))
        # index_select, not x[...]: the advanced-indexing kernels cost ~10x more on small CPU batches
        xs = x.index_select(0, order.div(k, rounding_mode="floor"))  # [T*K, H]
        if self.fp8:
            from engine.fp8_gemm import fp8_matmul

            gate, up = fp8_matmul(xs, self.gate_up_proj, self.gate_up_proj_scale_inv, counts,
                                  parts=2).chunk(2, dim=-1)
            out = fp8_matmul(F.silu(gate) * up, self.down_proj, self.down_proj_scale_inv, counts)
        else:
            gate_up = self.gate_up_proj.view(self.num_slots, -1, x.shape[1])  # [S, 2I, H]
            gate, up = grouped_linear(xs, gate_up, counts).chunk(2, dim=-1)
            out = grouped_linear(F.silu(gate) * up, self.down_proj, counts)  # [T*K, H]
        per_pair = out.index_select(0, order.argsort()).view(t, k, -1)  # back in (token, k) order
        return torch.bmm(weights.to(x.dtype)[:, None, :], per_pair)[:, 0]  # weighted sum over k


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x [S, in] whose rows come in groups of counts[e] [E], times their group's weight[e] [out, in].

    One grouped GEMM where torch has it for the device and dtype (no host sync, no Python loop);
    otherwise one matmul per non-empty group.
    """
    if _has_grouped_mm(x):
        return F.grouped_mm(x, weight.transpose(1, 2), offs=counts.cumsum(0).to(torch.int32))
    out = x.new_empty(x.shape[0], weight.shape[1])
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            out[start : start + n] = F.linear(x[start : start + n], weight[e])
            start += n
    return out


def _has_grouped_mm(x: torch.Tensor) -> bool:
    if not hasattr(F, "grouped_mm"):  # torch < 2.10
        return False
    if x.device.type == "cuda":  # the CUDA kernels need Ampere or newer
        return torch.cuda.get_device_capability(x.device) >= (8, 0)
    return x.device.type == "cpu"


def expert_checkpoint_names(param_name: str, spec: MoESpec) -> list[str] | None:
    """The per-expert checkpoint tensors an `Experts` parameter stacks; None for other parameters.

    `...experts.gate_up_proj` -> `...experts.{e}.gate_proj.weight`, `...up_proj.weight`, ...;
    a `*_scale_inv` parameter -> the same tensors' `weight_scale_inv`; a fused shared expert's
    slot reads `...shared_experts.*`.
    """
    prefix, _, leaf = param_name.rpartition(".")
    stack, scale = leaf.removesuffix("_scale_inv"), leaf.endswith("_scale_inv")
    if not prefix.endswith(".experts") or stack not in ("gate_up_proj", "down_proj"):
        return None
    projs = ("gate_proj", "up_proj") if stack == "gate_up_proj" else ("down_proj",)
    suffix = "weight_scale_inv" if scale else "weight"
    slots = [f"{prefix}.{e}" for e in range(spec.first_expert, spec.first_expert + spec.num_experts)]
    if spec.fuse_shared:
        slots.append(prefix.removesuffix(".experts") + ".shared_experts")
    return [f"{slot}.{p}.{suffix}" for slot in slots for p in projs]


class MoE(nn.Module):
    """Routed experts plus always-on shared experts (fused into the routed stacks when one)."""

    def __init__(self, spec: MoESpec):
        super().__init__()
        self.gate = Router(spec)
        self.experts = Experts(spec)
        self.shared_experts = (
            LlamaMLP(spec.hidden_size, spec.expert_intermediate_size * spec.num_shared_experts)
            if spec.num_shared_experts and not spec.fuse_shared
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> [T, H]."""
        out = self.experts(x, *self.gate(x))
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
