"""The standby's switch: the VRRP agent's notify hook POSTs here when this host takes the VIP.

`POST /admin/activate` makes a standby API serve (its /ready turns 200 once the worker is
connected); `POST /admin/deactivate` makes it answer 503 again, letting running requests
finish. /health stays 200 either way: the process is alive. Callers must be on loopback or
carry a configured API key (with no keys configured, loopback only).
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

    def allowed(request: Request) -> bool:
        if _is_loopback(request):
            return True
        return keys.enabled and keys.check(request.headers.get("authorization")) is not None

    async def switch(request: Request, active: bool) -> dict:
        if not allowed(request):
            raise APIError(403, "admin endpoints take loopback callers or an API key",
                           code="forbidden", type="invalid_request_error")
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

    return router
