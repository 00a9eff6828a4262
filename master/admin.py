"""The standby's switch, thrown by the VRRP agent's notify hook when this host takes the VIP.

A standby API (`role = "standby"`) loads, connects to the worker and answers /health (200) and
/ready (200 once the pipeline is up, the reason saying it is not active) from the start, but
its /v1 API answers 503 until it is activated:

- `POST /admin/vrrp` with the agent's event JSON (`{"state": "MASTER", ...}`): MASTER
  activates, any other state (BACKUP, FAULT, ...) deactivates;
- `POST /admin/activate` and `POST /admin/deactivate` do the same by hand;
- `GET /admin/stats`: the scheduler's numbers and both stages' KV use.

Deactivating lets running requests finish. A caller needs a key from `admin_keys` (a user's
`api_keys` key is not enough) or, unless `admin_from_loopback = false`, a loopback address.
The address is the TCP peer's, recorded by RealPeer before any proxy-header rewriting:
`X-Forwarded-For` and friends never grant admin rights. Every call is logged with its key id.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from master.auth import ApiKeyChecker
from master.errors import APIError

log = logging.getLogger("duet.master.admin")


class RealPeer:
    """Outermost middleware: records the TCP peer's address before anything may rewrite
    scope["client"] from forwarded headers (uvicorn's ProxyHeadersMiddleware does)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            scope.setdefault("state", {})["peer_host"] = client[0] if client else ""
        await self.app(scope, receive, send)


def peer_host(request: Request) -> str:
    recorded = getattr(request.state, "peer_host", None)
    if recorded is not None:
        return recorded
    return request.client.host if request.client else ""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AdminAccess:
    """Who may call /admin: holders of an admin key, and loopback callers if allowed."""

    keys: ApiKeyChecker
    from_loopback: bool = True
    warnings: tuple[str, ...] = ()  # shown in /admin/stats (e.g. no API keys on the network)

    def caller(self, request: Request) -> str | None:
        """The admin key's id, "loopback", or None (refused). Reads no forwarded header."""
        if self.keys.enabled:
            found = self.keys.check(request.headers.get("authorization"))
            if found is not None:
                return found
        if self.from_loopback and _is_loopback(peer_host(request)):
            return "loopback"
        return None


def admin_router(generator, access: AdminAccess) -> APIRouter:
    """Routes that flip `generator.set_active(...)` and show `generator.stats()`."""
    router = APIRouter()

    def check(request: Request) -> str:
        who = access.caller(request)
        log.warning("%s %s by %s from %s%s", request.method, request.url.path, who or "-",
                    peer_host(request) or "?", "" if who else ": refused")
        if who is None:
            raise APIError(403, "admin endpoints need an admin key"
                           + (" or a loopback caller" if access.from_loopback else ""),
                           code="forbidden", type="invalid_request_error")
        record = getattr(request.state, "access", None)
        if record is not None:
            record.key_id = who
        return who

    def switch(request: Request, active: bool, why: str) -> dict:
        generator.set_active(active)
        log.warning("API %s (%s)", "activated" if active else "deactivated", why)
        ready, reason = generator.readiness()
        return {"active": active, "ready": ready, "reason": reason}

    @router.post("/admin/activate")
    async def activate(request: Request) -> dict:
        check(request)
        return switch(request, True, "POST /admin/activate")

    @router.post("/admin/deactivate")
    async def deactivate(request: Request) -> dict:
        check(request)
        return switch(request, False, "POST /admin/deactivate")

    @router.post("/admin/vrrp")
    async def vrrp(request: Request) -> dict:
        check(request)
        try:
            event = await request.json()
            state = event["state"]
        except (ValueError, KeyError, TypeError):
            raise APIError(400, 'expected the VRRP event JSON, e.g. {"state": "MASTER"}',
                           param="state") from None
        if not isinstance(state, str):
            raise APIError(400, f"state must be a string, got {state!r}", param="state")
        return switch(request, state.upper() == "MASTER", f"VRRP state {state}")

    @router.get("/admin/stats")
    async def stats(request: Request) -> dict:
        check(request)
        ready, reason = generator.readiness()
        return generator.stats() | {"active": generator.active, "ready": ready, "reason": reason,
                                    "warnings": list(access.warnings)}

    return router
