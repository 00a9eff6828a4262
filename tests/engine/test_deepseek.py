"""DeepSeek-V2/V3 stages against transformers' own implementations, on tiny random checkpoints.

Each variant rewrites the routing / rope fields of a tiny checkpoint's config.json (the weights
do not depend on them), so that every routing method and query/rope layout meets the reference.
Uses the `tiny_checkpoint`, `pipeline` and `prompt` fixtures of conftest.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ATOL = 1e-4  # fp32: only summation order may differ

VARIANTS = {
    # q_lora_rank set, noaux_tc over 4 groups (best 2), norm_topk_prob, YaRN mscale = mscale_all_dim
    "v3": ("deepseek_v3", {}),
    # no groups, unnormalised weights, half-split rope, YaRN with mscale != mscale_all_dim
    "v3_plain": ("deepseek_v3", {
        "n_group": 1, "topk_group": 1, "norm_topk_prob": False, "routed_scaling_factor": 1.0,
        "rope_interleave": False,
        "rope_scaling": {"type": "yarn", "factor": 8, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                         "mscale_all_dim": 0.5, "original_max_position_embeddings": 4096},
    }),
    # q_lora_rank null, greedy softmax top-k, YaRN
    "v2": ("deepseek_v2", {}),
    # group-limited greedy, plain rope (no scaling): softmax scale without mscale
    "v2_group": ("deepseek_v2", {
        "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
        "routed_scaling_factor": 2.0, "rope_scaling": None,
    }),
}


def with_config(base: Path, out: Path, **fields) -> Path:
    """A checkpoint folder sharing `base`'s files, with config.json fields replaced."""
    out.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.name != "config.json":
            (out / f.name).symlink_to(f)
    config = json.loads((base / "config.json").read_text())
    config.update(fields)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def deepseek_checkpoint(tiny_checkpoint, tmp_path_factory):
    """deepseek_checkpoint(variant) -> folder, made once per session."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            arch, fields = VARIANTS[name]
            made[name] = with_config(tiny_checkpoint(arch), tmp_path_factory.mktemp(name), **fields)
        return made[name]

    return get


@pytest.fixture(scope="session", params=list(VARIANTS))
def variant(request, deepseek_checkpoint):
    """(checkpoint folder, transformers' model of it in fp32)."""
    from transformers import AutoModelForCausalLM

    ckpt = deepseek_checkpoint(request.param)
    return ckpt, AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()


def close_rows(got: torch.Tensor, want: torch.Tensor, tolerance: float = 0.05) -> float:
    """Share of rows [T, V] within `tolerance` x the largest logit. In half precision a token
    whose expert scores nearly tie may pick other experts than the reference (its row then
    differs by a lot), so half-precision checks ask for most rows, not all."""
    return ((got - want).abs().amax(-1) <= tolerance * want.abs().max()).float().mean().item()


def reference_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0]  # [T, V]


def test_every_split_gives_transformers_logits(variant, pipeline, prompt):
    ckpt, hf_model = variant
    ids = prompt(19, seed=7)
    want = reference_logits(hf_model, ids)
    for splits in [(), (1,), (2,), (3,)]:
        got = pipeline(ckpt, splits=splits).step([("a", 0, len(ids))], ids)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=f"splits {splits}")


def test_greedy_32_tokens_with_kv_cache_match_transformers(variant, pipeline, prompt):
    ckpt, hf_model = variant
    ids = prompt(10, seed=8)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32,
                                do_sample=False, top_p=None, temperature=None)
    assert pipeline(ckpt, splits=(2,)).greedy("a", ids, 32) == out[0, len(ids):].tolist()


def test_chunked_prefill_gives_the_logits_of_one_prefill(variant, pipeline, prompt):
    """Chunks of several tokens attend over expanded keys, a 1-token chunk in latent space:
    both give transformers' logits."""
    ckpt, hf_model = variant
    ids = prompt(20, seed=3)
    pipe = pipeline(ckpt, splits=(1,))
    parts = [pipe.step([("a", s, e - s)], ids[s:e]) for s, e in ((0, 7), (7, 8), (8, 20))]
    torch.testing.assert_close(torch.cat(parts), reference_logits(hf_model, ids), atol=ATOL, rtol=0)


def test_prompts_are_routed_to_many_experts(deepseek_checkpoint, pipeline, prompt):
    """The tiny checkpoints exercise routing: a prompt's tokens spread over the experts."""
    for name in ("v3", "v2_group"):
        pipe = pipeline(deepseek_checkpoint(name))
        chosen = []
        for layer in pipe.stages[0].model.model.layers.values():
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.register_forward_hook(lambda m, i, out: chosen.append(out[1]))
        pipe.step([("a", 0, 16)], prompt(16, seed=9))
        assert len(chosen) == 3  # layers 1..3 are MoE (first_k_dense_replace = 1)
        for ids in chosen:
            assert ids.unique().numel() >= 6  # of 8 experts, top-2 each
            assert (ids != ids[0]).any(dim=-1).any()  # not every token picks the same pair


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_mixed_batch_gives_what_each_sequence_gets_alone(deepseek_checkpoint, pipeline, prompt, name):
    ckpt = deepseek_checkpoint(name)
    a, b, c, d = prompt(9, seed=10), prompt(6, seed=11), prompt(10, seed=12), prompt(1, seed=13)
    # steps of (seq, start, tokens): b decodes, c prefills in two chunks, a and d start late
    steps = [
        [("b", 0, 5), ("c", 0, 4)],
        [("a", 0, 9), ("b", 5, 1), ("c", 4, 6), ("d", 0, 1)],
        [("b", 6, 1), ("d", 1, 1), ("a", 9, 1)],
    ]
    tokens = {"a": a + [5, 6], "b": b + [7, 8], "c": c, "d": d + [9]}

    def run(pipe, step):
        return pipe.step(step, [t for s, start, n in step for t in tokens[s][start:start + n]])

    together = pipeline(ckpt, splits=(2,))
    mixed = [run(together, step) for step in steps]
    for seq in tokens:
        alone = pipeline(ckpt, splits=(2,))
        for step, logits in zip(steps, mixed):
            offset = 0
            for s, start, n in step:
                if s == seq:
                    want = run(alone, [(s, start, n)])
                    torch.testing.assert_close(logits[offset:offset + n], want, atol=1e-5, rtol=0)
                offset += n


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_follows_transformers_in_the_same_dtype(deepseek_checkpoint, pipeline, prompt, dtype):
    """Half precision is compared with transformers in the same dtype: rounding moves fp32's
    routing near-ties, and both implementations then round alike (mostly: see close_rows)."""
    from transformers import AutoModelForCausalLM

    ckpt = deepseek_checkpoint("v3")
    ids = prompt(16, seed=4)
    hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).eval()
    pipe = pipeline(ckpt, splits=(2,), dtype=dtype)
    got = pipe.step([("a", 0, len(ids))], ids)
    want = reference_logits(hf, ids).float()
    assert torch.isfinite(got).all()
    assert close_rows(got, want) >= 0.75
    # the router's correction bias stays fp32 (as the reference keeps it)
    gate = pipe.stages[0].model.model.layers["1"].mlp.gate
    assert gate.weight.dtype == getattr(torch, dtype)
    assert gate.e_score_correction_bias.dtype == torch.float32


def test_multi_token_prediction_layers_are_never_read(deepseek_checkpoint, pipeline, prompt, tmp_path):
    """A V3 checkpoint with an MTP layer (model.layers.L.*, in its own shard): the stages skip
    it, so even an unreadable shard there changes nothing."""
    base = deepseek_checkpoint("v3")
    mtp = with_config(base, tmp_path / "mtp", num_nextn_predict_layers=1)
    (mtp / "model.safetensors.index.json").unlink()
    index = json.loads((base / "model.safetensors.index.json").read_text())
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "self_attn.kv_a_proj_with_mqa.weight",
                 "mlp.experts.0.gate_proj.weight", "shared_head.head.weight"):
        index["weight_map"][f"model.layers.4.{name}"] = "model-mtp.safetensors"
    (mtp / "model.safetensors.index.json").write_text(json.dumps(index))
    (mtp / "model-mtp.safetensors").write_bytes(b"not a safetensors file")
    ids = prompt(8, seed=14)
    want = pipeline(base, splits=(3,)).step([("a", 0, 8)], ids)
    torch.testing.assert_close(pipeline(mtp, splits=(3,)).step([("a", 0, 8)], ids), want, atol=0, rtol=0)


@pytest.mark.parametrize("fields, message", [
    ({"topk_method": "bogus"}, "topk_method 'bogus'"),
    ({"scoring_func": "softmax"}, "topk_method 'noaux_tc' with scoring_func 'softmax'"),
    ({"n_group": 3}, r"n_group \(3\) must divide n_routed_experts \(8\)"),
    ({"topk_group": 5}, "topk_group must be in"),
    ({"kv_lora_rank": None}, "field 'kv_lora_rank' must be an integer"),
    ({"num_experts_per_tok": 0}, "field 'num_experts_per_tok'"),
])
def test_bad_deepseek_config_is_one_clear_line(deepseek_checkpoint, tmp_path, fields, message):
    from engine.errors import CheckpointError
    from engine.stage import Stage

    bad = with_config(deepseek_checkpoint("v3"), tmp_path / "bad", **fields)
    with pytest.raises(CheckpointError, match=message) as err:
        Stage.load(bad, 0, 4)
    assert "\n" not in str(err.value) and str(err.value).startswith("config.json: ")


def test_moe_layer_freq_and_first_k_dense_replace_choose_the_moe_layers():
    """Layer i is MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0, so the stage
    asks the checkpoint for experts exactly there (dense MLP weights elsewhere)."""
    from engine.config import ModelConfig
    from engine.models import model_class
    from engine.tiny_configs import tiny_config

    raw = {**tiny_config("deepseek_v3", 6), "first_k_dense_replace": 1, "moe_layer_freq": 2}
    config = ModelConfig.from_dict(raw)
    with torch.device("meta"):
        model = model_class(config.architecture)(config, 1, 6)
    names = {n for p in model.state_dict() for n in model.checkpoint_names(p)}
    for i in range(1, 6):
        expert = f"model.layers.{i}.mlp.experts.7.up_proj.weight"
        dense = f"model.layers.{i}.mlp.up_proj.weight"
        assert (expert in names, dense in names) == ((True, False) if i % 2 == 0 else (False, True)), i
    assert model.kv_token_shapes() == [(32 + 8,)]  # kv_lora_rank + qk_rope_head_dim per token
