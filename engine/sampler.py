"""Choose each sequence's next token from a batch of logits, one SamplingParams per row.

Order of operations follows vLLM: penalties -> temperature -> min_p -> top_k -> top_p ->
draw. Logprobs are of the model's raw distribution (log_softmax of the logits before any
penalty or temperature), which is vLLM's default. A draw uses the exponential race
(argmax of probs / Exp(1) noise) so each row can have its own seeded generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.sampling_params import SamplingParams


@dataclass
class SamplerState:
    """One sequence's sampling state: its params, its random stream and its output so far."""

    params: SamplingParams
    generator: torch.Generator | None = None  # seeded when params.seed is set
    output_token_ids: list[int] = field(default_factory=list)

    @classmethod
    def create(cls, params: SamplingParams) -> "SamplerState":
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        return cls(params=params, generator=generator)

    def has_penalties(self) -> bool:
        p = self.params
        return p.presence_penalty != 0 or p.frequency_penalty != 0 or p.repetition_penalty != 1


@dataclass(frozen=True)
class SampleResult:
    """The chosen token of one row, its raw logprob, the top-N alternatives, and stop flag."""

    token_id: int
    logprob: float | None  # None when params.logprobs is None
    top_logprobs: tuple[tuple[int, float], ...] = ()  # sorted by logprob, best first
    stopped: bool = False


def apply_penalties(logits: torch.Tensor, state: SamplerState) -> torch.Tensor:
    """logits [V] -> penalized logits [V]. Presence/frequency count output tokens only;
    repetition counts prompt and output tokens (HF/vLLM semantics)."""
    p, vocab = state.params, logits.shape[-1]
    logits = logits.clone()
    out = torch.tensor(state.output_token_ids, dtype=torch.long)
    counts = torch.bincount(out, minlength=vocab)[:vocab].to(logits.dtype)  # [V]
    if p.repetition_penalty != 1:
        seen = counts > 0
        if p.prompt_token_ids:
            seen[torch.tensor(p.prompt_token_ids, dtype=torch.long)] = True
        penalized = torch.where(
            logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty
        )
        logits = torch.where(seen, penalized, logits)
    logits -= p.frequency_penalty * counts
    logits -= p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def truncate(probs: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """probs [V] -> probs [V] with the tokens min_p, top_k and top_p exclude set to 0."""
    if params.min_p > 0:
        probs = torch.where(probs < params.min_p * probs.max(), 0.0, probs)
    if params.top_k > 0 and params.top_k < probs.numel():
        kth = torch.topk(probs, params.top_k).values[-1]
        probs = torch.where(probs < kth, 0.0, probs)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_probs, 0) - sorted_probs  # [V]
        drop = mass_before > params.top_p * sorted_probs.sum()
        drop[0] = False  # the most likely token always survives
        probs = probs.clone()
        probs[order[drop]] = 0.0
    return probs


def choose(logits: torch.Tensor, state: SamplerState) -> int:
    """logits [V] fp32 (penalized) -> one token id."""
    params = state.params
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = truncate(torch.softmax(logits / params.temperature, dim=-1), params)
    noise = torch.empty_like(probs).exponential_(generator=state.generator)  # Exp(1) [V]
    return int(torch.argmax(probs / noise))


def sample(logits: torch.Tensor, states: list[SamplerState]) -> list[SampleResult]:
    """logits [B, V] fp32, one state per row -> one result per row; records the tokens."""
    assert logits.dim() == 2 and logits.shape[0] == len(states), "one state per logits row"
    raw_logprobs = None
    if any(s.params.logprobs is not None for s in states):
        raw_logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
    greedy = logits.argmax(dim=-1).tolist()  # [B]: one batched call serves plain greedy rows
    results = []
    for row, state in enumerate(states):
        if state.has_penalties():
            token = choose(apply_penalties(logits[row], state), state)
        elif state.params.temperature == 0:
            token = greedy[row]
        else:
            token = choose(logits[row], state)
        results.append(_result(token, state, None if raw_logprobs is None else raw_logprobs[row]))
        state.output_token_ids.append(token)
    return results


def _result(token: int, state: SamplerState, logprobs: torch.Tensor | None) -> SampleResult:
    """logprobs: [V] raw log-distribution of the row, or None when not asked."""
    stopped = token in state.params.stop_token_ids
    n_top = state.params.logprobs
    if n_top is None or logprobs is None:
        return SampleResult(token, None, (), stopped)
    top: tuple[tuple[int, float], ...] = ()
    if n_top > 0:
        values, ids = torch.topk(logprobs, min(n_top, logprobs.numel()))  # sorted, best first
        top = tuple(zip(ids.tolist(), values.tolist()))
    return SampleResult(token, float(logprobs[token]), top, stopped)
