"""API keys as settings: parsed from config or DUET_API_KEYS, named for the logs, and the
warning an API beyond loopback without keys deserves. Pure Python, so a bad key setting stops
`duet master` before torch or FastAPI load (master/auth.py checks requests)."""
from __future__ import annotations

import hashlib
import ipaddress
from typing import Mapping


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
