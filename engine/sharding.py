"""Tensor parallelism: cut a meta-built StageModel down to one rank's share, in place.

Each rank of a group of n keeps (Megatron / vLLM layout):
- attention: 1/n of the heads. Llama/Qwen2 split q/k/v by query and KV head (biases too); MLA
  splits q_proj (or q_b_proj) and kv_b_proj (the up-projections) by head and keeps the
  low-rank q_a / kv_a projections and the latent cache whole: every rank writes the same
  latent rows (kvr + rope = 576 values a token for V3; splitting them would need a gather per
  layer). o_proj takes its rows of the heads' outputs; the block's sum is one all-reduce.
- dense MLP: gate/up by output column, down by input row; one all-reduce.
- MoE: the router whole, the routed experts split by expert (expert parallel: rank r owns
  experts [r E/n, (r+1) E/n)), the shared expert(s) split column/row like a dense MLP; the
  routed and shared partial sums meet in one all-reduce. The alternative, every expert split
  by intermediate dim, gives each rank all E experts at I/n: balanced at any batch, but at
  batch 1 each rank reads top_k expert slivers of 2 x I/n x H (V3 at n = 8: 256 x 7168 weights,
  too thin for a GEMM to stream at full speed), and at batch 64 each rank still reads every
  visited expert. By expert, a rank reads whole experts, unbalanced at batch 1. Which serves
  decode better is for the multi-GPU benchmark (bench/tp/) to measure; this file does
  expert parallel.
- embedding and LM head: 1/n of the vocabulary rows. The embedding zeroes ids outside its rows
  and all-reduces; the stage all-gathers the LM head's logits columns (Stage.compute_logits).
Norms, rotary tables and the router stay whole. Parameter names stay the checkpoint's;
`model.tp_shards` maps each split parameter to (dim, start, stop) in the checkpoint tensor,
which the loader reads with safetensors' get_slice (engine/weights.py).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.base import StageModel
from engine.models.llama import LlamaAttention, LlamaMLP
from engine.models.moe import Experts, MoESpec
from engine.parallel import TPGroup

Shard = tuple[int, int, int]  # (dim, start, stop) of the checkpoint tensor this rank reads


def check_divisible(config, size: int, field: str = "tensor_parallel_size") -> None:
    """ValueError naming the field when `size` ranks cannot split this model evenly."""
    if size < 1:
        raise ValueError(f"{field} must be >= 1, got {size}")
    if size == 1:
        return
    needs = {"num_attention_heads": config.num_attention_heads, "vocab_size": config.vocab_size,
             "intermediate_size": config.intermediate_size}
    if config.get("kv_lora_rank") is None:  # dense attention splits KV heads too
        needs["num_key_value_heads"] = config.num_key_value_heads
    if config.get("n_routed_experts"):
        needs["n_routed_experts"] = config.get("n_routed_experts")
    if config.get("n_routed_experts") and config.get("n_shared_experts"):
        shared = config.get("moe_intermediate_size") * config.get("n_shared_experts")
        needs["shared experts' intermediate size"] = shared
    for name, value in needs.items():
        if value % size:
            raise ValueError(f"{field} = {size} does not divide the model's {name} ({value})")


def shard_model(model: StageModel, group: TPGroup) -> None:
    """Keep this rank's share of every split parameter (model still on meta; see module doc)."""
    check_divisible(model.config, group.size)
    shards: dict[str, Shard] = {}
    moe_spec: MoESpec | None = getattr(model, "moe_spec", None)
    if model.is_first:
        emb = model.model.embed_tokens
        model.model.embed_tokens = VocabParallelEmbedding(emb.num_embeddings, emb.embedding_dim, group)
        shards["model.embed_tokens.weight"] = (0, *model.model.embed_tokens.rows)
    for idx, layer in model.model.layers.items():
        prefix = f"model.layers.{idx}"
        _shard_attention(layer.self_attn, f"{prefix}.self_attn", group, shards)
        _shard_mlp(moe_spec, layer, f"{prefix}.mlp", group, shards)
    if moe_spec is not None:  # checkpoint_names then lists this rank's experts only
        model.moe_spec = _local_moe_spec(moe_spec, group)
    if model.is_last:
        _split_linear(model.lm_head, "lm_head", 0, group, shards)  # Stage.compute_logits gathers
    model.tp_shards = _with_scales(model, shards)


def kv_token_shapes(model: StageModel) -> list[tuple[int, ...]]:
    """The cache rows of one layer on this rank (dense attention: its KV heads only)."""
    attn = next(iter(model.model.layers.values())).self_attn
    if isinstance(attn, LlamaAttention):
        return [(attn.num_kv_heads, attn.head_dim)] * 2
    return model.kv_token_shapes()  # MLA: the latent cache is whole on every rank


def _reduce_hook(group: TPGroup):
    return lambda _module, _inputs, out: group.all_reduce_(out)


def _shard_attention(attn: nn.Module, name: str, group: TPGroup, shards: dict) -> None:
    n = group.size
    if isinstance(attn, LlamaAttention):
        for proj in ("q_proj", "k_proj", "v_proj"):
            _split_linear(getattr(attn, proj), f"{name}.{proj}", 0, group, shards)
        attn.num_heads, attn.num_kv_heads = attn.num_heads // n, attn.num_kv_heads // n
    else:  # MLA: the up-projections by head, the latent projections whole
        for proj in ("q_proj", "q_b_proj", "kv_b_proj"):
            if hasattr(attn, proj):
                _split_linear(getattr(attn, proj), f"{name}.{proj}", 0, group, shards)
        attn.spec = dataclasses.replace(attn.spec, num_heads=attn.spec.num_heads // n)
    _split_linear(attn.o_proj, f"{name}.o_proj", 1, group, shards)
    attn.register_forward_hook(_reduce_hook(group))


def _shard_mlp(spec: MoESpec | None, layer: nn.Module, name: str, group: TPGroup,
               shards: dict) -> None:
    mlp = layer.mlp
    if isinstance(mlp, LlamaMLP):
        d = mlp.down_proj
        layer.mlp = RowParallelMLP(d.out_features, d.in_features, d.bias is not None, group)
        _split_dense(layer.mlp, name, group, shards)
    else:
        _shard_moe(spec, mlp, name, group, shards)
        mlp.register_forward_hook(_reduce_hook(group))


def _split_dense(mlp: LlamaMLP, name: str, group: TPGroup, shards: dict) -> None:
    _split_linear(mlp.gate_proj, f"{name}.gate_proj", 0, group, shards)
    _split_linear(mlp.up_proj, f"{name}.up_proj", 0, group, shards)
    _split_linear(mlp.down_proj, f"{name}.down_proj", 1, group, shards)


def _local_moe_spec(spec: MoESpec, group: TPGroup) -> MoESpec:
    """The experts this rank owns. Routing stays global (the router is whole), so the local
    spec has no groups and no shared slot (the shared expert is split like a dense MLP)."""
    first, stop = group.shard_range(spec.num_experts)
    return dataclasses.replace(spec, num_experts=stop - first, first_expert=first,
                               num_shared_experts=0, num_groups=1, topk_groups=1,
                               top_k=min(spec.top_k, stop - first))


def _shard_moe(spec: MoESpec, moe: nn.Module, name: str, group: TPGroup, shards: dict) -> None:
    moe.experts = LocalExperts(_local_moe_spec(spec, group))
    if spec.num_shared_experts:
        inter = spec.expert_intermediate_size * spec.num_shared_experts
        moe.shared_experts = LlamaMLP(spec.hidden_size, inter)
        _split_dense(moe.shared_experts, f"{name}.shared_experts", group, shards)


def _split_linear(linear: nn.Module, name: str, dim: int, group: TPGroup, shards: dict) -> None:
    """Keep rows (dim 0: output features) or columns (dim 1: input features) of a Linear."""
    w = linear.weight
    start, stop = group.shard_range(w.shape[dim])
    shape = list(w.shape)
    shape[dim] = stop - start
    linear.weight = nn.Parameter(torch.empty(shape, dtype=w.dtype, device=w.device), requires_grad=False)
    shards[f"{name}.weight"] = (dim, start, stop)
    linear.out_features, linear.in_features = shape
    if linear.bias is None:
        return
    if dim == 0:
        linear.bias = nn.Parameter(torch.empty(stop - start, dtype=w.dtype, device=w.device),
                                   requires_grad=False)
        shards[f"{name}.bias"] = (0, start, stop)
    elif group.rank:  # a row-split output is summed over the ranks: add the bias once
        linear.bias = None


def _with_scales(model: StageModel, shards: dict[str, Shard]) -> dict[str, Shard]:
    """FP8 checkpoints: each split weight's `weight_scale_inv` covers the blocks of its share."""
    quant = model.config.get("quantization_config")
    if not quant:
        return shards
    block = tuple(quant.get("weight_block_size") or (128, 128))
    out = dict(shards)
    for name, (dim, start, stop) in shards.items():
        if name.endswith(".weight"):
            out[name + "_scale_inv"] = (dim, start // block[dim], -(-stop // block[dim]))
    return out


class RowParallelMLP(LlamaMLP):
    """A dense MLP's share: its partial sum is all-reduced before the residual joins it (the
    decoder layer hands the residual to a dense MLP to add in its down product)."""

    def __init__(self, hidden: int, intermediate: int, bias: bool, group: TPGroup):
        super().__init__(hidden, intermediate, bias)
        self.group = group

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = self.group.all_reduce_(super().forward(x))
        return out if residual is None else residual.add_(out)


class VocabParallelEmbedding(nn.Embedding):
    """Rows [start, stop) of the vocabulary; other ids embed to 0 before the all-reduce."""

    def __init__(self, vocab: int, hidden: int, group: TPGroup):
        self.rows = group.shard_range(vocab)
        super().__init__(self.rows[1] - self.rows[0], hidden)
        self.group = group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.rows[0]  # [T]
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)  # [T, H]
        return self.group.all_reduce_(out.masked_fill_(outside[:, None], 0))


class LocalExperts(Experts):
    """The routed experts [first_expert, first_expert + num_experts) of this rank."""

    def __init__(self, spec):
        super().__init__(spec)
        self.first_expert = spec.first_expert

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [T, H], weights/ids [T, K] (global expert ids) -> this rank's partial sum [T, H]."""
        local = ids - self.first_expert
        # nonzero() waits for the device: fine eagerly; a decode graph under TP would need
        # zero-weight pairs on a scratch expert instead (CUDA graphs are off under TP for now)
        tok, k = ((local >= 0) & (local < self.num_experts)).nonzero(as_tuple=True)  # [P] pairs
        out = torch.zeros_like(x)
        if tok.numel():  # each (token, expert) pair as a token of its own, K = 1
            part = super().forward(x.index_select(0, tok), weights[tok, k][:, None],
                                   local[tok, k][:, None])
            out.index_add_(0, tok, part)
        return out
