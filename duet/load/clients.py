"""The clients of `duet load`: each streams one completion after another until the run ends
(a request in flight then is finished, not cut). Prompt and output lengths are drawn per
request from the given ranges with a seeded generator, so two runs send the same work."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx

from duet.drill.load import attempt

# Prompt words: common English, so a tokenizer makes ~1-2 tokens of each.
WORDS = ("the of and to in is was for on that with as by at from his her it an were are "
         "which this be or has had not but what all when there can who been one more if no "
         "out so said time about would into them these some could other than then its only "
         "river hill story light water stone night morning city garden market letter").split()
FAILED_PAUSE_S = 0.2  # a client whose request failed waits this long (no busy loop)


@dataclass(frozen=True)
class Workload:
    """What the clients send, and for how long."""

    url: str  # the API, http://host:port
    model: str
    clients: int
    duration_s: float
    prompt_words: tuple[int, int] = (8, 256)  # words per prompt, drawn uniformly
    max_tokens: tuple[int, int] = (16, 128)  # output tokens per request, drawn uniformly
    seed: int = 0
    api_key: str = ""
    request_timeout_s: float = 300.0  # a stream waiting longer than this for a byte fails

    def __post_init__(self):
        if self.clients < 1:
            raise ValueError(f"--clients: expected >= 1, got {self.clients}")
        if self.duration_s <= 0:
            raise ValueError(f"--minutes: expected > 0, got {self.duration_s / 60:g}")
        for name in ("prompt_words", "max_tokens"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"--{name.replace('_', '-')}: expected 1 <= MIN <= MAX, "
                                 f"got {low}:{high}")


def request_body(rng: random.Random, w: Workload) -> dict:
    words = rng.randint(*w.prompt_words)
    return {"model": w.model, "prompt": " ".join(rng.choice(WORDS) for _ in range(words)),
            "max_tokens": rng.randint(*w.max_tokens), "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}


def summary(rec: dict, client: int, t0: float) -> dict:
    """One request as the report needs it (times in s since the run started)."""
    first = rec.get("first_token")
    return {"client": client, "start": rec["start"] - t0, "end": rec["end"] - t0,
            "ok": rec["ok"], "status": rec.get("status"), "error": rec.get("error"),
            "ttft_s": first - rec["start"] if first else None,
            "tokens": (rec.get("usage") or {}).get("completion_tokens", rec["tokens"]),
            "gaps_s": rec.get("gaps_s", [])}


async def run_clients(w: Workload, done: list[dict], t0: float) -> None:
    """Until t0 + duration_s; every finished request is appended to `done` at once."""
    headers = {"Authorization": f"Bearer {w.api_key}"} if w.api_key else {}
    timeout = httpx.Timeout(w.request_timeout_s, connect=10.0)
    limits = httpx.Limits(max_connections=w.clients + 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers,
                                 trust_env=False) as client:
        async def one(index: int) -> None:
            rng = random.Random(w.seed * 100_003 + index)
            while time.monotonic() < t0 + w.duration_s:
                rec = await attempt(client, w.url, request_body(rng, w), keep_gaps=True)
                done.append(summary(rec, index, t0))
                if not rec["ok"]:
                    await asyncio.sleep(FAILED_PAUSE_S)

        await asyncio.gather(*(one(i) for i in range(w.clients)))
