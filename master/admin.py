"""The standby's switch, thrown by the VRRP agent's notify hook when this host takes the VIP.

A standby API (`role = "standby"`) loads, connects to the worker and answers /health (200) and
/ready (200 once the pipeline is up, the reason saying it is not active) from the start, but
its /v1 API answers 503 until it is activated:

- `POST /admin/vrrp` with the agent's event JSON (`{"state": "MASTER", ...}`): MASTER
  activates, any other state (BACKUP, FAULT, ...) deactivates;
- `POST /admin/activate` and `POST /admin/deactivate` do the same by hand;
- `GET /admin/stats`: the scheduler's numbers and both stages' KV use.

Deactivating lets running requests finish. Callers must be on loopback or carry a configured
API key (with no keys configured, loopback only).
"""
from __future__ import annotations

import ipaddress
import logging

from fastapi import APIRouter, Request

from master.auth import ApiKeyChecker
from master.errors import APIError

log = logging.getLogger("duet.master.admin")


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_router(generator, keys: ApiKeyChecker) -> APIRouter:
    """Routes that flip `generator.set_active(...)` and show `generator.stats()`."""
    router = APIRouter()

    def check(request: Request) -> None:
        if _is_loopback(request):
            return
        if keys.enabled and keys.check(request.headers.get("authorization")) is not None:
            return
        raise APIError(403, "admin endpoints take loopback callers or an API key",
                       code="forbidden", type="invalid_request_error")

    def switch(request: Request, active: bool, why: str) -> dict:
        generator.set_active(active)
        log.warning("API %s (%s, from %s)", "activated" if active else "deactivated", why,
                    request.client.host if request.client else "?")
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
        return generator.stats() | {"active": generator.active, "ready": ready, "reason": reason}

    return router
