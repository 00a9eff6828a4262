"""The standby's switch: the VRRP agent's notify hook POSTs here when this host takes the VIP.

`POST /admin/activate` makes a standby API serve (its /ready turns 200 once the worker is
connected); `POST /admin/deactivate` makes it answer 503 again, letting running requests
finish. /health stays 200 either way: the process is alive. `GET /admin/stats` shows the
scheduler's and both stages' KV numbers. Callers must be on loopback or carry a configured
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
    """Routes that flip `generator.set_active(...)`."""
    router = APIRouter()

    def check(request: Request) -> None:
        if _is_loopback(request):
            return
        if keys.enabled and keys.check(request.headers.get("authorization")) is not None:
            return
        raise APIError(403, "admin endpoints take loopback callers or an API key",
                       code="forbidden", type="invalid_request_error")

    async def switch(request: Request, active: bool) -> dict:
        check(request)
        generator.set_active(active)
        log.warning("API %s by %s", "activated" if active else "deactivated",
                    request.client.host if request.client else "?")
        ready, reason = generator.readiness()
        return {"active": active, "ready": ready, "reason": reason}

    @router.post("/admin/activate")
    async def activate(request: Request) -> dict:
        return await switch(request, True)

    @router.post("/admin/deactivate")
    async def deactivate(request: Request) -> dict:
        return await switch(request, False)

    @router.get("/admin/stats")
    async def stats(request: Request) -> dict:
        check(request)
        ready, reason = generator.readiness()
        return generator.stats() | {"active": generator.active, "ready": ready, "reason": reason}

    return router
