"""API keys checked on every request: in constant time, logged by id only (parsing and the
start-up warnings are in master/api_keys.py)."""
from __future__ import annotations

import hmac
from typing import Mapping

from master.errors import APIError


class ApiKeyChecker:
    """Checks `Authorization: Bearer <key>` against the configured keys."""

    def __init__(self, keys: Mapping[str, str]):
        self._keys = [(name, key.encode()) for name, key in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> str | None:
        """The key's id if the header carries a configured key, else None.

        Every configured key is compared, so the time taken does not say which one matched.
        """
        if not self.enabled:
            return "anonymous"
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        found = None
        for name, key in self._keys:
            if hmac.compare_digest(given, key) and found is None:
                found = name
        return found if given else None


class ApiKeyMiddleware:
    """Answers 401 in OpenAI's shape before any /v1 route runs without a valid key."""

    def __init__(self, app, checker: ApiKeyChecker, prefix: str | tuple[str, ...] = "/v1/"):
        self.app, self.checker, self.prefix = app, checker, prefix

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization")
        found = self.checker.check(header.decode("latin-1") if header else None)
        record = scope.get("state", {}).get("access")
        if found is None:
            message = ("Incorrect API key provided." if header else
                       "You didn't provide an API key: use the Authorization: Bearer header.")
            error = APIError(401, message, code="invalid_api_key",
                             headers={"WWW-Authenticate": "Bearer"})
            await error.response()(scope, receive, send)
            return
        if record is not None:
            record.key_id = found
        await self.app(scope, receive, send)
