"""DeepSeek-V2/V3 stages on a CUDA GPU against transformers on the same GPU (skipped without one).

The checkpoints are written without a tokenizer (none is needed), so that this runs on a GPU
host that has torch, safetensors and transformers but not the tokenizer packages.
"""
from __future__ import annotations

import json

import pytest
import torch

from engine.batch import SeqChunk, StepBatch
from engine.config import ModelConfig
from engine.stage import Stage
from engine.tiny_configs import tiny_config
from engine.tiny_model import random_tensors, write_shards

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
LAYERS = 4


@pytest.fixture(scope="module", params=["deepseek_v3", "deepseek_v2"])
def ckpt(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    raw = tiny_config(request.param, LAYERS)
    write_shards(random_tensors(ModelConfig.from_dict(raw), seed=0), out, LAYERS)
    (out / "config.json").write_text(json.dumps(raw))
    return out


def run(stages: list[Stage], chunks, ids: list[int]) -> torch.Tensor:
    batch = StepBatch(tuple(SeqChunk(*c) for c in chunks))
    x = torch.tensor(ids)
    for s in stages:
        x = s.forward(batch, x)
    return stages[-1].compute_logits(x).cpu()


def load(ckpt, splits=(2,), **kwargs) -> list[Stage]:
    bounds = [0, *splits, LAYERS]
    return [Stage.load(ckpt, a, b, device="cuda", kv_cache_bytes=2**22, **kwargs) for a, b in zip(bounds, bounds[1:])]


def hf(ckpt, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).to("cuda").eval()


def close_rows(got: torch.Tensor, want: torch.Tensor) -> float:
    """Share of rows within 5% of the largest logit (see test_deepseek.close_rows)."""
    return ((got - want).abs().amax(-1) <= 0.05 * want.abs().max()).float().mean().item()


def ids_of(n: int, seed: int) -> list[int]:
    return torch.randint(0, 120_000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_fp32_on_cuda_gives_transformers_logits_and_greedy_tokens(ckpt):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = hf(ckpt, torch.float32)
    ids = ids_of(17, 1)
    with torch.no_grad():
        want = model(torch.tensor([ids], device="cuda")).logits[0].cpu()
        gen = model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=32, min_new_tokens=32,
                             do_sample=False, top_p=None, temperature=None)[0, 17:].tolist()
    stages = load(ckpt)
    torch.testing.assert_close(run(stages, [("a", 0, 17)], ids), want, atol=1e-3, rtol=0)
    got = [int(run(stages, [("g", 0, 17)], ids)[-1].argmax())]
    while len(got) < 32:
        got.append(int(run(stages, [("g", 16 + len(got), 1)], [got[-1]])[-1].argmax()))
    assert got == gen


def test_bf16_on_cuda_follows_transformers_bf16(ckpt):
    model = hf(ckpt, torch.bfloat16)
    ids = ids_of(16, 4)
    with torch.no_grad():
        want = model(torch.tensor([ids], device="cuda")).logits[0].float().cpu()
    got = run(load(ckpt, dtype="bfloat16"), [("a", 0, 16)], ids)
    assert torch.isfinite(got).all()
    assert close_rows(got, want) >= 0.75  # a near-tie may route one token differently


def test_mixed_batch_on_cuda_gives_what_each_sequence_gets_alone(ckpt):
    a, b = ids_of(9, 2), ids_of(5, 3)
    together = load(ckpt)
    run(together, [("b", 0, 5)], b)
    mixed = run(together, [("a", 0, 9), ("b", 5, 1)], a + [7])
    alone_a = run(load(ckpt), [("a", 0, 9)], a)
    alone_b = load(ckpt)
    run(alone_b, [("b", 0, 5)], b)
    torch.testing.assert_close(mixed[:9], alone_a, atol=1e-4, rtol=0)
    torch.testing.assert_close(mixed[9:], run(alone_b, [("b", 5, 1)], [7]), atol=1e-4, rtol=0)
