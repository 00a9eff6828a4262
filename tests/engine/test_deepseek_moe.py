"""The MoE block alone: routing against transformers' routers, and the two expert paths."""
from __future__ import annotations

import pytest
import torch

from engine.models import moe
from engine.models.moe import MoE, MoESpec, Router

H, E = 64, 16


def _spec(method: str, **kw) -> MoESpec:
    return MoESpec(hidden_size=H, num_experts=E, top_k=4, expert_intermediate_size=32,
                   num_shared_experts=1, method=method, **kw)


def _reference_router(spec: MoESpec):
    """transformers' router for the same settings, with random weights."""
    if spec.method == "noaux_tc":
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter as Ref

        config = DeepseekV3Config(hidden_size=H, n_routed_experts=E, num_experts_per_tok=spec.top_k,
                                  n_group=spec.num_groups, topk_group=spec.topk_groups,
                                  norm_topk_prob=spec.norm_topk_prob,
                                  routed_scaling_factor=spec.routed_scaling_factor)
    else:
        from transformers import DeepseekV2Config
        from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter as Ref

        config = DeepseekV2Config(hidden_size=H, n_routed_experts=E, num_experts_per_tok=spec.top_k,
                                  n_group=spec.num_groups, topk_group=spec.topk_groups,
                                  topk_method=spec.method, routed_scaling_factor=spec.routed_scaling_factor)
    ref = Ref(config)
    torch.nn.init.normal_(ref.weight, std=H**-0.5)
    if spec.method == "noaux_tc":
        ref.e_score_correction_bias.normal_(std=0.1)
    return ref


@pytest.mark.parametrize("spec", [
    _spec("noaux_tc", num_groups=4, topk_groups=2, norm_topk_prob=True, routed_scaling_factor=2.5),
    _spec("noaux_tc", num_groups=4, topk_groups=2, norm_topk_prob=False),
    _spec("noaux_tc", num_groups=1, topk_groups=1, norm_topk_prob=True),
    _spec("greedy", routed_scaling_factor=16.0),
    _spec("group_limited_greedy", num_groups=8, topk_groups=3),
], ids=lambda s: f"{s.method}-g{s.num_groups}-norm{int(s.norm_topk_prob)}")
def test_router_picks_transformers_experts_and_weights(spec):
    torch.manual_seed(0)
    ref = _reference_router(spec)
    ours = Router(spec)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(64, H)
    with torch.no_grad():
        _, want_w, want_ids = ref(x)
        got_w, got_ids = ours(x)
    order_want, order_got = want_ids.argsort(-1), got_ids.argsort(-1)  # top-k order is free
    assert torch.equal(got_ids.gather(1, order_got), want_ids.gather(1, order_want))
    torch.testing.assert_close(got_w.gather(1, order_got), want_w.gather(1, order_want))
    assert got_ids.unique().numel() == E  # 64 tokens reach every expert


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_gemm_and_per_expert_loop_agree(monkeypatch, dtype):
    """The experts give the same sums whether torch has a grouped GEMM or not."""
    torch.manual_seed(1)
    block = MoE(_spec("noaux_tc", num_groups=4, topk_groups=2)).to(dtype)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(19, H, dtype=dtype)
    with torch.no_grad():
        grouped = block(x)
        monkeypatch.setattr(moe, "_has_grouped_mm", lambda x: False)
        looped = block(x)
    torch.testing.assert_close(grouped, looped, atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)
    assert grouped.abs().mean() > 0.01


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match="n_group"):
        _spec("noaux_tc", num_groups=3)
    with pytest.raises(ValueError, match="topk_method"):
        _spec("sinkhorn")
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        _spec("group_limited_greedy", num_groups=8, topk_groups=1)  # 2 experts left for top-4
