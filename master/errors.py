"""OpenAI's error shape and the FastAPI handlers that turn every failure into it."""
from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from master.generation import PipelineUnavailable, QueueFull, SequenceFailed
from master.openai_responses import ErrorInfo, ErrorResponse

log = logging.getLogger("duet.master")

# gRPC status of a failed sequence -> HTTP status.
_SEQUENCE_STATUS = {"RESOURCE_EXHAUSTED": 503, "INVALID_ARGUMENT": 400, "UNAVAILABLE": 503,
                    "CANCELLED": 499, "DEADLINE_EXCEEDED": 504}
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
          404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error",
          429: "rate_limit_error", 499: "invalid_request_error"}


class ClientGone(Exception):
    """The client disconnected before the response started: answered 499, which nobody
    reads (the access log shows the disconnect)."""


class APIError(Exception):
    """A failure the client should see, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def to_api_error(exc: BaseException) -> APIError:
    """Map a generator or template failure to what the client sees; unknown ones are 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        return APIError(429, str(exc), code="rate_limit_exceeded", headers={"Retry-After": retry})
    if isinstance(exc, PipelineUnavailable):
        retry_after_s = getattr(exc, "retry_after_s", 0)  # a cold standby that is loading
        headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else None
        return APIError(503, f"the model is unavailable: {exc}", code="pipeline_unavailable",
                        headers=headers)
    if isinstance(exc, SequenceFailed):
        status = _SEQUENCE_STATUS.get(exc.code, 500)
        return APIError(status, f"generation failed: {exc}", code=exc.code.lower())
    log.error("unhandled error", exc_info=exc)
    return APIError(500, "internal server error", code="internal_error")


def _param(loc: tuple) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role' (pydantic's location, OpenAI style)."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "list[", "str", "int", "dict[")):  # union arms
            out += f".{part}" if out else part
    return out or None


def validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = _param(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    where = f"{param}: " if param else ""
    return APIError(400, f"{where}{msg}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone):
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed",
                413: "request_too_large"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception):
        return to_api_error(exc).response()
