"""The sampler as it was before it ran batched on the device: row by row, reading the device
after each choice. Kept as the reference the batched engine.sampler must equal (its tests).

Choose each sequence's next token from a batch of logits, one SamplingParams per row.

Order of operations follows vLLM: penalties -> temperature -> min_p -> top_k -> top_p ->
draw. Logprobs are of the model's raw distribution (log_softmax of the logits before any
penalty or temperature), which is vLLM's default. Each row draws with its own generator
(seeded when asked), so a seed gives the same tokens whatever else is in the batch.
"""
from __future__ import annotations

import torch

from engine.sampler import GREEDY_BELOW_TEMPERATURE, SampleResult, SamplerState
from engine.sampling_params import SamplingParams


def apply_penalties(logits: torch.Tensor, state: SamplerState) -> torch.Tensor:
    """logits [V] -> penalized logits [V]. Presence/frequency count output tokens only;
    repetition counts prompt and output tokens (HF/vLLM semantics). Touches only seen ids."""
    p = state.params
    logits = logits.clone()
    output = torch.tensor(state.output_token_ids, dtype=torch.long, device=logits.device)
    if p.repetition_penalty != 1:
        prompt = torch.tensor(p.prompt_token_ids, dtype=torch.long, device=logits.device)
        seen = torch.unique(torch.cat([prompt, output]))
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / p.repetition_penalty,
                                   values * p.repetition_penalty)
    if output.numel() and (p.frequency_penalty or p.presence_penalty):
        ids, counts = torch.unique(output, return_counts=True)
        logits[ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty
    return logits


def truncate(probs: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """probs [V] -> (ids [K], probs [K]) of the tokens that min_p, top_k and top_p keep."""
    ids = torch.arange(probs.numel(), device=probs.device)
    if params.min_p > 0:
        keep = probs >= params.min_p * probs.max()
        ids, probs = ids[keep], probs[keep]
    if params.top_k > 0 and params.top_k < probs.numel():
        probs, order = torch.topk(probs, params.top_k)
        ids = ids[order]
    if params.top_p < 1:
        probs, order = _top_p(probs, params.top_p)
        ids = ids[order]
    return ids, probs


def _top_p(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, positions) of the most likely tokens until their mass reaches top_p (the best
    always stays). Sorts only as many candidates as needed: a full sort of a 150k vocabulary
    costs milliseconds, and a peaked distribution reaches top_p within a few hundred."""
    size, target = probs.numel(), top_p * float(probs.sum())
    k = min(size, 1024)
    while True:
        values, order = torch.topk(probs, k)  # [k], best first
        if float(values.sum()) > target or k == size:
            break
        k = min(size, k * 8)
    keep = (torch.cumsum(values, 0) - values) < target  # mass before each token
    keep[0] = True
    return values[keep], order[keep]


def is_greedy(params: SamplingParams) -> bool:
    # Below this, logits / temperature overflows: vLLM treats it as greedy too.
    return params.temperature < GREEDY_BELOW_TEMPERATURE


def choose(logits: torch.Tensor, state: SamplerState) -> int:
    """logits [V] fp32 (penalized) -> one token id, drawn by inverse CDF over the candidates."""
    params = state.params
    if is_greedy(params):
        return int(torch.argmax(logits))
    ids, probs = truncate(torch.softmax(logits / params.temperature, dim=-1), params)
    cdf = torch.cumsum(probs, 0)  # [K]
    if not bool(torch.isfinite(cdf[-1])) or float(cdf[-1]) <= 0:  # NaN logits: no distribution
        return int(torch.argmax(torch.nan_to_num(logits, nan=float("-inf"))))
    # Drawn on the CPU from the sequence's own generator, so a seed means the same on any device.
    u = torch.rand((), generator=state.generator).to(cdf.device) * cdf[-1]
    return int(ids[min(int(torch.searchsorted(cdf, u, right=True)), ids.numel() - 1)])


def sample_rowwise(logits: torch.Tensor, states: list[SamplerState]) -> list[SampleResult]:
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
        elif is_greedy(state.params):
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
