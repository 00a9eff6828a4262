"""How one sequence wants its next tokens chosen; the same fields travel in the .proto."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.constraint import Constraint


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampling settings, validated once where they enter (HTTP or gRPC)."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off
    seed: int | None = None  # same seed, same output
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off; counts prompt and output tokens
    logprobs: int | None = None  # None = none; 0 = the sampled token's; N = and top-N others
    stop_token_ids: tuple[int, ...] = ()
    prompt_token_ids: tuple[int, ...] = field(default=(), repr=False)
    constraint: Constraint | None = None  # structured outputs: what the output must match

    def __post_init__(self):
        checks = {
            "temperature": self.temperature >= 0,
            "top_p": 0 < self.top_p <= 1,
            "top_k": self.top_k >= 0,
            "min_p": 0 <= self.min_p <= 1,
            "presence_penalty": -2 <= self.presence_penalty <= 2,
            "frequency_penalty": -2 <= self.frequency_penalty <= 2,
            "repetition_penalty": self.repetition_penalty > 0,
            "logprobs": self.logprobs is None or 0 <= self.logprobs <= 20,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} out of range: {getattr(self, name)!r}")
