"""413 for a request body over the configured size, before any of it is parsed or tokenized.

A pure ASGI middleware: a declared Content-Length over the limit is refused at once; a body
without one (chunked) is counted as it arrives and refused as soon as it passes the limit.
"""
from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from master.errors import APIError


def too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of "
                    f"{max_bytes} bytes (max_request_body_bytes)", code="request_too_large")


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with OpenAI's error shape and HTTP 413."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(self.max_bytes).response()(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException from reading the body; the app's
                    # handler (master/errors.py) turns it into the JSON error.
                    raise HTTPException(413, str(too_large(self.max_bytes)))
            return message

        await self.app(scope, counting_receive, send)
