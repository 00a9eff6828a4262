"""The batched device sampler equals the row-wise one it replaced (sampler_reference.py) on every
option, seeded and unseeded draws included, over several steps (penalties see past output)."""
from __future__ import annotations

import pytest
import torch
from sampler_reference import sample_rowwise

from engine.sampler import SamplerState, sample
from engine.sampling_ops import sort_candidates
from engine.sampling_params import SamplingParams

VOCAB = 300
OPTIONS = [
    {"temperature": 0},
    {"temperature": 0.7},
    {"temperature": 1e-9},  # greedy, not NaN
    {"temperature": 1.2, "top_k": 5},
    {"top_p": 0.8},
    {"min_p": 0.05},  # candidates in vocabulary order
    {"min_p": 0.02, "top_k": 400},  # top_k above the survivors: still vocabulary order
    {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "min_p": 0.01},
    {"temperature": 0, "frequency_penalty": 0.7, "presence_penalty": 0.3},
    {"repetition_penalty": 1.3, "temperature": 0.8, "top_p": 0.95},
    {"logprobs": 3, "temperature": 0.5, "presence_penalty": -0.4},
    {"logprobs": 0, "top_k": 3, "repetition_penalty": 0.7},
    {"logprobs": 20, "temperature": 0, "stop_token_ids": (5, 6)},
]


def outcome(results):
    return [(r.token_id, r.logprob, [i for i, _ in r.top_logprobs], r.stopped) for r in results]


@pytest.mark.parametrize("seed", range(4))
def test_every_option_gives_the_row_wise_tokens_and_logprobs(seed):
    g = torch.Generator().manual_seed(seed)
    params = [SamplingParams(**opts, seed=100 * seed + i if i % 2 else None,
                             prompt_token_ids=tuple(torch.randint(0, VOCAB, (7,), generator=g).tolist()))
              for i, opts in enumerate(OPTIONS)]
    rowwise = [SamplerState.create(p) for p in params]
    batched = [SamplerState.create(p) for p in params]
    torch.manual_seed(seed)  # unseeded rows draw from the global stream: give both the same
    for _ in range(6):
        logits = torch.randn(len(params), VOCAB, generator=g) * 3
        global_rng = torch.random.get_rng_state()
        want = outcome(sample_rowwise(logits, rowwise))
        torch.random.set_rng_state(global_rng)
        got = outcome(sample(logits, batched))
        for (token, logprob, top, stop), (w_token, w_logprob, w_top, w_stop) in zip(got, want):
            assert (token, top, stop) == (w_token, w_top, w_stop)
            assert logprob == (None if w_logprob is None else pytest.approx(w_logprob, abs=1e-6))
    assert [s.output_token_ids for s in batched] == [s.output_token_ids for s in rowwise]


def test_a_nan_row_takes_its_best_real_logit_and_leaves_the_others_alone():
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(3))
    logits[1] = float("nan")
    logits[1, 42] = 1.0
    params = [SamplingParams(seed=1, top_p=0.9), SamplingParams(seed=2), SamplingParams(temperature=0)]
    want = [r.token_id for r in sample_rowwise(logits, [SamplerState.create(p) for p in params])]
    got = [r.token_id for r in sample(logits, [SamplerState.create(p) for p in params])]
    assert got == want and got[1] == 42


@pytest.mark.parametrize("seed", range(3))
def test_a_batch_truncated_by_top_k_gives_the_row_wise_tokens(seed):
    """Every sampled row that ranks has a top_k (a greedy row with the checkpoint's top_p
    takes the argmax): only the best top_k are ordered, not the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    options = [{"top_k": 5}, {"top_k": 1, "temperature": 0.8}, {"top_k": 40, "top_p": 0.7},
               {"top_k": 3, "min_p": 0.2}, {"top_k": 400, "min_p": 0.05, "top_p": 0.9},
               {"temperature": 0.9}, {"temperature": 0, "top_p": 0.95}]  # greedy: top_p unused
    params = [SamplingParams(**opts, seed=10 * seed + i) for i, opts in enumerate(options)]
    rowwise = [SamplerState.create(p) for p in params]
    batched = [SamplerState.create(p) for p in params]
    for _ in range(6):
        logits = torch.randn(len(params), VOCAB, generator=g) * 3
        assert outcome(sample(logits, batched)) == outcome(sample_rowwise(logits, rowwise))


def test_the_best_top_k_come_in_the_full_sorts_order_ties_by_lower_id():
    g = torch.Generator().manual_seed(0)
    probs = torch.randint(0, 4, (5, VOCAB), generator=g).float() / 8  # ties everywhere
    probs[1] = 0.0
    masked = torch.where(torch.rand(5, VOCAB, generator=g) < 0.3, -1.0, probs)  # min_p's drops
    full_values, full_ids = masked.sort(dim=1, descending=True, stable=True)
    for width in (1, 7, 64, VOCAB - 1):
        values, ids = sort_candidates(masked, width)
        assert torch.equal(ids, full_ids[:, :width]) and torch.equal(values, full_values[:, :width])
