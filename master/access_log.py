"""One log line per API request, written when its last byte is sent (streams included)."""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

QUIET_PATHS = ("/health", "/ready", "/metrics")  # probes and scrapes: no line
# Kept as they are in a logged path; everything else (controls, spaces, quotes, "%", non-ASCII)
# is percent-encoded, so a request cannot forge a line or a field.
PATH_SAFE = "/-._~!$&'()*+,;=:@"


def escaped(text: str) -> str:
    """`text` (a decoded path or a method) percent-encoded for one log field."""
    return quote(text, safe=PATH_SAFE, encoding="utf-8", errors="surrogateescape")


@dataclass
class AccessRecord:
    """What a handler fills in about its request; the middleware adds status and timing."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    key_id: str = "-"
    status: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None  # from arrival to the first generated token
    finish: str = "-"  # "stop", "length", "disconnect", "error" …
    prompt: str | None = None  # logged only when configured
    start_s: float = field(default_factory=time.perf_counter)

    def mark_first_token(self) -> None:
        if self.ttft_s is None:
            self.ttft_s = time.perf_counter() - self.start_s

    def line(self, method: str, path: str, log_prompts: bool) -> str:
        total_s = time.perf_counter() - self.start_s
        ttft = "-" if self.ttft_s is None else f"{self.ttft_s:.4f}"
        parts = [f"request_id={self.request_id}", f"key={self.key_id}", f'"{escaped(method)} {escaped(path)}"',
                 f"status={self.status}", f"prompt_tokens={self.prompt_tokens}",
                 f"output_tokens={self.output_tokens}", f"ttft_s={ttft}",
                 f"total_s={total_s:.4f}", f"finish={self.finish}"]
        if log_prompts and self.prompt is not None:
            parts.append(f"prompt={json.dumps(self.prompt, ensure_ascii=False)}")
        return " ".join(parts)


class AccessLogMiddleware:
    """Puts an AccessRecord in request.state.access and logs it once the response is done."""

    def __init__(self, app: ASGIApp, log_prompts: bool = False,
                 logger: logging.Logger | None = None):
        self.app = app
        self.log_prompts = log_prompts
        self.logger = logger or logging.getLogger("duet.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        record = AccessRecord()
        scope.setdefault("state", {})["access"] = record
        done = False

        async def send_logged(message: Message) -> None:
            nonlocal done
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", record.request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
                self._log(scope, record)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            if not done:  # the client left, or the app failed before finishing the body
                if record.finish == "-":
                    record.finish = "disconnect"
                record.status = record.status or 499
                self._log(scope, record)

    def _log(self, scope: Scope, record: AccessRecord) -> None:
        self.logger.info(record.line(scope["method"], scope["path"], self.log_prompts))
