"""Choose each sequence's next token from a batch of logits, one SamplingParams per row.

Order of operations follows vLLM: penalties -> temperature -> min_p -> top_k -> top_p ->
draw. Logprobs are of the model's raw distribution (log_softmax of the logits before any
penalty or temperature), which is vLLM's default. Each row draws with its own generator
(seeded when asked), so a seed gives the same tokens whatever else is in the batch.

The whole batch runs in one sequence of kernels on the logits' device (engine/sampling_ops.py);
the host reads the device once per step, for every row's token and logprobs together. The
uniform draws come from each sequence's CPU generator (so a seed means the same on any device)
before the kernels run: a row whose logits are all NaN still uses up one draw.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.guide import Guide, apply_guides
from engine.sampling_ops import apply_penalties, choose
from engine.sampling_params import SamplingParams

GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass
class SamplerState:
    """One sequence's sampling state: its params, its random stream and its output so far."""

    params: SamplingParams
    generator: torch.Generator | None = None  # seeded when params.seed is set
    output_token_ids: list[int] = field(default_factory=list)
    guide: Guide | None = None  # the grammar its output must match (engine/guide.py), if any

    @classmethod
    def create(cls, params: SamplingParams, guide: Guide | None = None) -> "SamplerState":
        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        return cls(params=params, generator=generator, guide=guide)

    @classmethod
    def resume(cls, params: SamplingParams, output_token_ids: list[int],
               guide: Guide | None = None) -> "SamplerState":
        """The state after `output_token_ids` were sampled: penalties count them, the seeded
        generator is where `sample` left it (one draw per token of a non-greedy row), and the
        grammar has consumed them."""
        state = cls.create(params, guide)
        state.output_token_ids = list(output_token_ids)
        for token in output_token_ids:  # the same calls as `sample`: the same positions
            if state.generator is not None and not is_greedy(params):
                torch.rand((), generator=state.generator)
            if guide is not None:
                guide.consume(token)
        return state

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


def is_greedy(params: SamplingParams) -> bool:
    # Below this, logits / temperature overflows: vLLM treats it as greedy too.
    return params.temperature < GREEDY_BELOW_TEMPERATURE


def sample(logits: torch.Tensor, states: list[SamplerState]) -> list[SampleResult]:
    """logits [B, V] fp32, one state per row -> one result per row; records the tokens."""
    assert logits.dim() == 2 and logits.shape[0] == len(states), "one state per logits row"
    params = [s.params for s in states]
    allowed = apply_guides(logits, [s.guide for s in states])  # grammars' masks first
    penalized = apply_penalties(allowed, params, [s.output_token_ids for s in states])
    greedy = [is_greedy(p) for p in params]
    if all(greedy):
        tokens = penalized.argmax(-1)  # [B]
    else:
        draws = [torch.rand((), generator=s.generator) for s, g in zip(states, greedy)
                 if not g]  # fp32, from each sequence's own stream, in row order
        uniform = torch.zeros(len(states))
        uniform[[i for i, g in enumerate(greedy) if not g]] = torch.stack(draws)
        tokens = choose(penalized, params, uniform.to(logits.device, non_blocking=True), greedy)
    columns = [tokens[:, None].double()]  # [B, 1 + (1 + 2N if logprobs)] read back at once
    asked = [p.logprobs for p in params if p.logprobs is not None]
    n_top = min(max(asked), logits.shape[1]) if asked else 0
    if asked:
        raw = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
        columns.append(raw.gather(1, tokens[:, None]).double())
        if n_top:
            values, ids = torch.topk(raw, n_top, dim=-1)  # sorted, best first
            columns += [ids.double(), values.double()]
    rows = torch.cat(columns, dim=1).tolist()  # the step's one wait for the device
    results = []
    for state, row in zip(states, rows):
        token = int(row[0])
        results.append(_result(token, state.params, row[1:], n_top))
        state.output_token_ids.append(token)
        if state.guide is not None:
            state.guide.consume(token)
    return results


def _result(token: int, params: SamplingParams, row: list[float], n_top: int) -> SampleResult:
    """row: [chosen logprob, top ids (n_top), top values (n_top)] or [] when none was asked."""
    stopped = token in params.stop_token_ids
    if params.logprobs is None:
        return SampleResult(token, None, (), stopped)
    n = min(params.logprobs, n_top)
    top = tuple((int(i), v) for i, v in zip(row[1 : 1 + n], row[1 + n_top : 1 + n_top + n]))
    return SampleResult(token, row[0], top, stopped)
