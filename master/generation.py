"""The seam between the HTTP layer and the pipeline: ask for tokens, get them one at a time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from engine.sampling_params import SamplingParams
from proto.convert import WireError, check_wire_ranges


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate; n > 1 is n of these, made by the HTTP layer."""

    request_id: str  # unique per sequence: "chatcmpl-…-0"
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    # Resuming after the API that ran it died (worker/orphans.py): the key the worker keeps
    # the sequence under while its stream is broken, and whether to ask for it first.
    resume_key: str = ""
    adopt: bool = False


@dataclass(frozen=True)
class TokenEvent:
    """One generated token as the worker sampled it."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finish_reason: str | None = None  # "stop" (stop token or EOS), "length", or None


class PipelineUnavailable(Exception):
    """The worker cannot be reached or refused the handshake: HTTP 503, message says why."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the Retry-After header, when one is known


class QueueFull(Exception):
    """Too many waiting requests: HTTP 429 with Retry-After."""

    def __init__(self, retry_after_s: float):
        super().__init__(f"the request queue is full; retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class SequenceFailed(Exception):
    """The worker failed this sequence (e.g. KV cache exhausted); others go on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code  # grpc status name, e.g. "RESOURCE_EXHAUSTED"


def check_request(request: GenerationRequest, vocab_size: int) -> None:
    """SequenceFailed (INVALID_ARGUMENT) for a request the pipeline cannot carry. Refused here
    it fails alone; inside a step it would fail the head forward or the step message."""
    ids = request.prompt_token_ids
    if not ids or min(ids) < 0 or max(ids) >= vocab_size:
        raise SequenceFailed("INVALID_ARGUMENT", f"prompt_token_ids: empty or outside the "
                             f"vocabulary [0, {vocab_size})")
    try:
        check_wire_ranges(request.params)
    except WireError as e:
        raise SequenceFailed("INVALID_ARGUMENT", str(e)) from None


class Generator(Protocol):
    """What the HTTP layer needs from the scheduler."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Tokens as they come. Closing the iterator early (client gone, stop string hit)
        releases the sequence on both stages within one step."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): head loaded, worker connected, handshake passed."""
