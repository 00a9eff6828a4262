"""API keys: parsed from config or DUET_API_KEYS, checked in constant time, logged by id only."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Mapping

from master.errors import APIError


def key_id(key: str) -> str:
    """A name for an unnamed key that is safe to log: a short hash, never the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_api_keys(value) -> dict[str, str]:
    """Key id -> key from `"name1:key1,key2"`, a list of keys, or a {name: key} table.

    A setting that is present but holds no key (`DUET_API_KEYS=""`, `api_keys = []`) is an
    error, not "no authentication": leave the setting out to run without keys.
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")] if value.strip() else []
    if isinstance(value, Mapping):
        entries = [(str(name), key) for name, key in value.items()]
    elif isinstance(value, (list, tuple)):
        entries = [_split(item) for item in value]
    else:
        raise ValueError("expected a list of keys, a {name = key} table or 'name:key,...'")
    if not entries:
        raise ValueError("set but empty: leave the setting out to run without keys")
    keys: dict[str, str] = {}
    for name, key in entries:
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"empty or non-string key for {name or 'an entry'!r}")
        if key != key.strip() or any(c.isspace() or not c.isprintable() for c in key):
            raise ValueError(f"the key for {name or 'an entry'!r} contains whitespace")
        name = name or key_id(key)
        if name in keys:
            raise ValueError(f"key id {name!r} appears twice")
        keys[name] = key
    return keys


def exposure_warnings(host: str, api_keys: Mapping[str, str]) -> tuple[str, ...]:
    """What an operator should hear at start-up (and see in /admin/stats) about exposure."""
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or api_keys:
        return ()
    return (f"the API listens on {host}, beyond loopback, without API keys: anyone who "
            "reaches it can use it (set api_keys or DUET_API_KEYS)",)


def _split(item) -> tuple[str, str]:
    if not isinstance(item, str):
        raise ValueError(f"expected a string key, got {type(item).__name__}")
    name, sep, key = item.partition(":")
    return (name.strip(), key.strip()) if sep else ("", item)


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
