"""The shape every architecture shares: embedding, a range of decoder layers, final norm, LM head.

A stage is this model built for layers [layer_start, layer_end). Parameter names equal the
Hugging Face checkpoint names (`model.layers.7.self_attn.q_proj.weight`), so loading is a
name mapping that is the identity except where an architecture says otherwise.
"""
from __future__ import annotations

import torch
from torch import nn

from engine import fused, gemv
from engine.batch import ForwardContext

# The cache tensors of one layer: each [num_slots, *token_shape] (see kv_token_shapes).
LayerKV = tuple[torch.Tensor, ...]


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 like the reference implementations."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] and fused.usable(x):  # one kernel instead of seven
            return fused.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def add_forward(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h = x + r, norm(h)): a residual add and this norm; one kernel on CUDA. h is a new
        tensor (never x or r)."""
        if (x.dim() == 2 and x.shape[0] and fused.usable(x) and x.is_contiguous()
                and r.is_contiguous() and r.dtype == x.dtype and r.device == x.device):
            return fused.add_rms_norm(x, r, self.weight, self.eps)
        h = x + r
        return h, self(h)


class StageModel(nn.Module):
    """A layer range of a causal LM. Subclasses build one decoder layer and name its KV shape."""

    def __init__(self, config, layer_start: int, layer_end: int):
        super().__init__()
        self.config = config
        self.layer_start, self.layer_end = layer_start, layer_end
        self.is_first = layer_start == 0
        self.is_last = layer_end == config.num_hidden_layers
        self.model = nn.Module()
        if self.is_first:
            # Given its weight, the embedding skips its random init: on the meta device that
            # init (normal_) imports torch._dynamo, ~3 s of every first stage's start-up.
            self.model.embed_tokens = nn.Embedding(
                config.vocab_size, config.hidden_size,
                _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.model.layers = nn.ModuleDict(
            {str(i): self.make_layer(i) for i in range(layer_start, layer_end)}
        )
        if self.is_last:
            self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    # --- what an architecture provides -------------------------------------------------
    def make_layer(self, layer_idx: int) -> nn.Module:
        """A decoder layer: forward(hidden [T, H], ctx, kv: LayerKV) -> hidden [T, H]."""
        raise NotImplementedError

    def kv_token_shapes(self) -> list[tuple[int, ...]]:
        """Per-token shape of each cache tensor of one layer (same for every layer).

        Dense attention: [(kv_heads, head_dim), (kv_heads, head_dim)] for keys and values.
        MLA: [(kv_lora_rank + qk_rope_head_dim,)] for the compressed latent and rope key.
        """
        raise NotImplementedError

    def checkpoint_name(self, param_name: str) -> str:
        """Checkpoint tensor name of a parameter; the identity unless an architecture remaps."""
        return param_name

    def checkpoint_names(self, param_name: str) -> list[str]:
        """Checkpoint tensors that make one parameter, stacked along a new dim 0 when several
        (e.g. per-expert weights into [E, ...]); [checkpoint_name(param_name)] by default."""
        return [self.checkpoint_name(param_name)]

    # --- the forward contract ----------------------------------------------------------
    def forward(
        self, inputs: torch.Tensor, ctx: ForwardContext, kv: dict[int, LayerKV]
    ) -> torch.Tensor:
        """inputs: token ids [T] on the first stage, else hidden states [T, H].

        Returns hidden states [T, H] after this stage's last layer (before the final norm).
        """
        hidden = self.model.embed_tokens(inputs) if self.is_first else inputs
        for idx, layer in self.model.layers.items():
            hidden = layer(hidden, ctx, kv[int(idx)])
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] -> fp32 logits [N, V]; last stage only."""
        assert self.is_last, "logits are computed only on the last stage"
        return gemv.apply(self.lm_head, self.model.norm(hidden)).float()
