"""A streaming completion that survives a lost connection: the client side of resumable
streams (master/resume.py), with httpx and httpx-sse.

    from master.resume_client import ResumingStream
    for chunk in ResumingStream("http://vip:8000", body, api_key="sk-…"):
        print(chunk["choices"][0]["delta"].get("content", ""), end="")

It sends an `X-Request-Id` of its own, remembers the `id:` of the last event it handed out,
and when the stream breaks (connection reset, a 5xx or 429 while the VIP moves, a stream that
ends without [DONE]) re-POSTs the same body with `Last-Event-ID`, with backoff: every event
comes out once, in order. The official openai SDK ignores the ids and works unchanged.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Iterator

import httpx
from httpx_sse import SSEError, connect_sse

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class StreamBroken(Exception):
    """The stream ended before [DONE], or the server answered a status worth retrying."""


class ResumingStream:
    """The chunks (parsed JSON) of one streaming request, each exactly once."""

    def __init__(self, base_url: str, body: dict, *, path: str = "/v1/chat/completions",
                 api_key: str | None = None, request_id: str | None = None,
                 max_attempts: int = 20, backoff_s: float = 0.2, max_backoff_s: float = 2.0,
                 timeout_s: float = 60.0, client: httpx.Client | None = None):
        self.url = base_url.rstrip("/") + path
        self.body = {**body, "stream": True}
        self.request_id = request_id or f"resume-{uuid.uuid4().hex}"
        self.api_key = api_key
        self.max_attempts, self.backoff_s, self.max_backoff_s = max_attempts, backoff_s, max_backoff_s
        self.client = client or httpx.Client(timeout=timeout_s)
        self.last_event_id: str | None = None
        self.reconnects = 0  # how many times the stream was picked up again

    def _headers(self) -> dict[str, str]:
        headers = {"X-Request-Id": self.request_id}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def _once(self) -> Iterator[dict]:
        """One connection's events after last_event_id; StreamBroken if it ends early."""
        with connect_sse(self.client, "POST", self.url, json=self.body,
                         headers=self._headers()) as source:
            status = source.response.status_code
            if status in RETRY_STATUS:
                raise StreamBroken(f"HTTP {status}")
            source.response.raise_for_status()  # 4xx: the request itself is wrong
            for event in source.iter_sse():
                if event.data == "[DONE]":
                    return
                chunk = json.loads(event.data)
                if event.id:
                    self.last_event_id = event.id
                yield chunk
        raise StreamBroken("the stream ended without [DONE]")

    def __iter__(self) -> Iterator[dict]:
        attempt, delay_s = 0, self.backoff_s
        while True:
            try:
                yield from self._once()
                return
            except (httpx.TransportError, StreamBroken, SSEError) as e:
                attempt += 1
                if attempt >= self.max_attempts:
                    raise StreamBroken(f"gave up after {attempt} attempts: {e}") from e
            self.reconnects += 1
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, self.max_backoff_s)
