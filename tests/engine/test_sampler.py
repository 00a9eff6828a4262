"""The sampler's knobs, each on logits built so the right answer is known."""
import math

import pytest
import torch

from engine.sampler import SamplerState, sample
from engine.sampling_params import SamplingParams
from sampler_reference import apply_penalties, truncate  # the row-wise sampler sample() equals

VOCAB = 50


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def states(*params: SamplingParams) -> list[SamplerState]:
    return [SamplerState.create(p) for p in params]


def draw(logits: torch.Tensor, params: SamplingParams, n: int) -> list[int]:
    """n tokens from the same logits row, one sequence state (so a seed advances)."""
    state = SamplerState.create(params)
    return [sample(logits[:1], [state])[0].token_id for _ in range(n)]


def test_greedy_is_exact_argmax_per_row():
    logits = random_logits(4)
    out = sample(logits, states(*[SamplingParams(temperature=0)] * 4))
    assert [r.token_id for r in out] == logits.argmax(-1).tolist()


def test_top_k_1_equals_greedy():
    logits = random_logits(3, seed=1)
    out = sample(logits, states(*[SamplingParams(temperature=1.5, top_k=1)] * 3))
    assert [r.token_id for r in out] == logits.argmax(-1).tolist()


def test_same_seed_same_output_and_other_seed_differs():
    logits = torch.zeros(1, VOCAB)  # uniform: every draw is pure randomness
    a = draw(logits, SamplingParams(seed=7), 20)
    b = draw(logits, SamplingParams(seed=7), 20)
    c = draw(logits, SamplingParams(seed=8), 20)
    assert a == b
    assert a != c


def test_a_resumed_state_continues_the_seeded_stream_and_the_penalties():
    """A worker rebuilding a sequence from its output so far samples what the lost one would."""
    logits = random_logits(8, seed=3)
    params = SamplingParams(temperature=1.0, seed=11, frequency_penalty=1.5)
    state = SamplerState.create(params)
    first = [sample(logits[i : i + 1], [state])[0].token_id for i in range(4)]
    rest = [sample(logits[i : i + 1], [state])[0].token_id for i in range(4, 8)]
    resumed = SamplerState.resume(params, first)
    assert [sample(logits[i : i + 1], [resumed])[0].token_id for i in range(4, 8)] == rest
    fresh = SamplerState.create(params)  # reseeding instead would repeat the first draws
    assert torch.rand((), generator=fresh.generator) != torch.rand((), generator=resumed.generator)


def test_a_resumed_state_feeds_its_output_so_far_to_the_grammar():
    """A constrained sequence rebuilt on a new worker continues its grammar where it was."""

    class RecordingGuide:  # the one method resume uses of engine.guide.Guide
        def __init__(self):
            self.consumed = []

        def consume(self, token_id):
            self.consumed.append(token_id)
            return True

    guide = RecordingGuide()
    state = SamplerState.resume(SamplingParams(temperature=0), [5, 7, 2], guide)
    assert guide.consumed == [5, 7, 2] and state.guide is guide


def test_seeded_row_is_independent_of_its_batch_neighbours():
    logits = torch.zeros(3, VOCAB)
    alone = sample(logits[:1], states(SamplingParams(seed=3)))[0].token_id
    mixed = sample(logits, states(SamplingParams(), SamplingParams(seed=3), SamplingParams()))
    assert mixed[1].token_id == alone


def test_sampling_follows_the_distribution():
    logits = torch.full((1, VOCAB), -1e9)
    logits[0, 3], logits[0, 9] = math.log(0.75), math.log(0.25)
    tokens = draw(logits, SamplingParams(seed=0), 400)
    assert set(tokens) == {3, 9}
    assert 0.65 < tokens.count(3) / 400 < 0.85


def kept(probs: list[float], **params) -> list[int]:
    ids, values = truncate(torch.tensor(probs), SamplingParams(**params))
    assert values.tolist() == pytest.approx([probs[i] for i in ids.tolist()])
    return sorted(ids.tolist())


def test_min_p_drops_tokens_below_fraction_of_the_best():
    assert kept([0.5, 0.3, 0.1, 0.06, 0.04], min_p=0.2) == [0, 1, 2]  # threshold 0.1


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = [0.1, 0.5, 0.25, 0.15]
    assert kept(probs, top_p=0.7) == [1, 2]  # 0.5 + 0.25 reaches 0.7
    assert kept(probs, top_p=0.01) == [1]


def test_top_p_on_a_flat_vocabulary_larger_than_the_first_guess():
    probs = [1 / 5000] * 5000
    assert abs(len(kept(probs, top_p=0.5)) - 2500) <= 1  # float sums may tip one either way


def test_top_k_keeps_k_most_likely():
    assert kept([0.1, 0.5, 0.25, 0.15], top_k=2) == [1, 2]


def test_filters_combine():
    probs = [0.4, 0.3, 0.2, 0.06, 0.04]
    assert kept(probs, top_k=4, top_p=0.6, min_p=0.1) == [0, 1]


def test_truncated_tokens_are_never_sampled():
    logits = random_logits(1, seed=5)
    allowed = set(torch.topk(logits[0], 3).indices.tolist())
    assert set(draw(logits, SamplingParams(top_k=3, seed=1), 200)) <= allowed


def test_batched_penalties_equal_the_row_wise_ones():
    from engine.sampling_ops import apply_penalties as batched

    logits = random_logits(3, seed=8)
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, prompt_token_ids=(4,)),
              SamplingParams(),
              SamplingParams(repetition_penalty=1.3, frequency_penalty=-0.5, prompt_token_ids=(0, 9))]
    outputs = [[1, 1, 2], [3], [9, 7, 7]]
    got = batched(logits, params, outputs)
    for row, (p, out) in enumerate(zip(params, outputs)):
        state = SamplerState(p, None, out)
        assert torch.equal(got[row], apply_penalties(logits[row], state))


def test_presence_and_frequency_penalize_output_tokens_only():
    state = SamplerState.create(
        SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, prompt_token_ids=(4,))
    )
    state.output_token_ids = [1, 1, 2]
    out = apply_penalties(torch.zeros(5), state)
    assert out.tolist() == pytest.approx([0, -1.0, -0.75, 0, 0])


def test_repetition_penalty_scales_prompt_and_output_tokens_by_sign():
    state = SamplerState.create(SamplingParams(repetition_penalty=2.0, prompt_token_ids=(0,)))
    state.output_token_ids = [1]
    out = apply_penalties(torch.tensor([4.0, -4.0, 4.0, -4.0]), state)
    assert out.tolist() == [2.0, -8.0, 4.0, -4.0]


def test_greedy_with_penalty_avoids_the_repeated_token():
    logits = torch.tensor([[5.0, 4.9, 0.0]])
    params = SamplingParams(temperature=0, frequency_penalty=1.0)
    assert draw(logits, params, 2) == [0, 1]  # after emitting 0 once, 1 wins


def test_logprobs_are_of_the_raw_distribution_with_sorted_alternatives():
    logits = random_logits(1, seed=2)
    params = SamplingParams(temperature=0.3, repetition_penalty=1.5, logprobs=3, seed=1)
    result = sample(logits, states(params))[0]
    raw = torch.log_softmax(logits[0], -1)
    assert result.logprob == pytest.approx(float(raw[result.token_id]))
    ids, values = zip(*result.top_logprobs)
    assert list(ids) == torch.topk(raw, 3).indices.tolist()
    assert list(values) == sorted(values, reverse=True)


def test_logprobs_absent_unless_asked_and_zero_means_sampled_only():
    logits = random_logits(2)
    none, zero = sample(logits, states(SamplingParams(), SamplingParams(logprobs=0)))
    assert none.logprob is None and none.top_logprobs == ()
    assert zero.logprob is not None and zero.top_logprobs == ()


def test_stop_token_ids_are_flagged():
    logits = torch.zeros(2, VOCAB)
    logits[:, 7] = 10
    out = sample(logits, states(SamplingParams(temperature=0, stop_token_ids=(7,)),
                                SamplingParams(temperature=0, stop_token_ids=(8,))))
    assert [r.stopped for r in out] == [True, False]


def test_sample_records_output_for_later_penalties():
    state = SamplerState.create(SamplingParams(temperature=0))
    sample(random_logits(1), [state])
    sample(random_logits(1, seed=9), [state])
    assert len(state.output_token_ids) == 2


def test_tiny_temperature_is_greedy_not_nan():
    logits = random_logits(2, seed=4)
    out = sample(logits, states(*[SamplingParams(temperature=1e-9, seed=1)] * 2))
    assert [r.token_id for r in out] == logits.argmax(-1).tolist()


def test_nan_logits_give_a_token_not_an_error():
    logits = torch.full((1, VOCAB), float("nan"))
    logits[0, 11] = 1.0
    assert sample(logits, states(SamplingParams(seed=0)))[0].token_id == 11


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_logits_give_the_cpu_answers():
    logits = random_logits(4, seed=6)
    for params in (SamplingParams(temperature=0, logprobs=2, frequency_penalty=0.5),
                   SamplingParams(temperature=0.9, top_p=0.8, top_k=20, min_p=0.01, seed=5,
                                  repetition_penalty=1.3, prompt_token_ids=(1, 2))):
        cpu_states, gpu_states = states(*[params] * 4), states(*[params] * 4)
        for step in range(3):
            cpu = sample(logits, cpu_states)
            gpu = sample(logits.cuda(), gpu_states)
            assert [r.token_id for r in gpu] == [r.token_id for r in cpu], (params, step)
