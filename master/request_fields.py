"""Request fields duet does not implement: metadata-only ones are accepted and ignored, any
other is refused with a 400 naming it, as OpenAI's API refuses unrecognized arguments.

A field that would change the output (logit_bias, response_format before structured outputs,
a vLLM extension not built here) must never be silently dropped: the client would get an
answer to a different question without knowing it.
"""
from __future__ import annotations

from typing import Any

# Bookkeeping for the client or OpenAI's platform; none of them changes the output.
METADATA_ONLY = frozenset({"user", "store", "metadata", "service_tier", "safety_identifier"})


def refuse_unknown(extra: dict[str, Any] | None) -> None:
    """ValueError naming the first field that is neither declared nor metadata-only."""
    for name in extra or {}:
        if name not in METADATA_ONLY:
            raise ValueError(f"Unrecognized request argument supplied: {name}")
