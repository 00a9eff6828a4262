"""Server-sent events of a streaming response: the writer, the event loop, [DONE], closing."""
from __future__ import annotations

import json
import time
from typing import AsyncIterator, Callable

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from master.choices import ChoiceUpdate
from master.errors import to_api_error
from master.protocol import Usage

SSE_DONE = "data: [DONE]\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """An SSE response that closes its body iterator however the response ends."""

    # Starlette abandons the iterator when the client leaves while it waits in `send`; closing
    # it here frees the sequences at once instead of whenever the garbage collector runs.

    def __init__(self, content, **kwargs):
        super().__init__(content, media_type="text/event-stream", **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


class SSEWriter:
    """The `data: {...}` events of one stream; the constant head is serialised only once."""

    def __init__(self, response_id: str, obj: str, model: str):
        head = json.dumps({"id": response_id, "object": obj, "created": int(time.time()),
                           "model": model}, ensure_ascii=False, separators=(",", ":"))
        self._head = "data: " + head[:-1] + ',"choices":['

    def event(self, choices: list[BaseModel], usage: Usage | None = None) -> str:
        body = self._head + ",".join(c.model_dump_json() for c in choices) + "]"
        if usage is not None:
            body += ',"usage":' + usage.model_dump_json()
        return body + "}\n\n"


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_error(exc: BaseException) -> str:
    return sse(to_api_error(exc).body())


async def sse_events(first: ChoiceUpdate, updates: AsyncIterator[ChoiceUpdate],
                     event: Callable[[ChoiceUpdate], str], opening: list[str],
                     usage: Callable[[], str] | None) -> AsyncIterator[str]:
    """opening events, one event per non-empty update, the usage event, [DONE]; always
    closes `updates` (which frees the sequences)."""
    try:
        for e in opening:
            yield e
        if not first.is_empty():
            yield event(first)
        async for u in updates:
            if not u.is_empty():
                yield event(u)
        if usage is not None:
            yield usage()
    except Exception as e:  # headers are sent: the error goes in the stream
        yield sse_error(e)
    finally:
        await updates.aclose()
    yield SSE_DONE


def usage_event(req, run, writer: SSEWriter) -> Callable[[], str] | None:
    """The closing usage chunk, when the request's stream_options ask for it."""
    if req.stream_options and req.stream_options.include_usage:
        return lambda: writer.event([], usage=run.usage())
    return None
