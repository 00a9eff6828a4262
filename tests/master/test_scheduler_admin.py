"""The standby switch: who may flip it, and what it flips."""
from fastapi import FastAPI
from fastapi.testclient import TestClient

import logging

from master.admin import AdminAccess, admin_router
from master.auth import ApiKeyChecker
from master.config import MasterConfig
from master.errors import install_error_handlers
from master.main import _asgi


class FakeGenerator:
    def __init__(self):
        self.active = False

    def set_active(self, active):
        self.active = active

    def readiness(self):
        return True, "ready" if self.active else "ready; standby API not active"

    def stats(self):
        return {"running": 0}


def app_for(generator, keys, from_loopback=True, forwarded_allow_ips="") -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(admin_router(generator, AdminAccess(ApiKeyChecker(keys), from_loopback)))
    config = MasterConfig(model_dir="m", forwarded_allow_ips=forwarded_allow_ips)
    # its client address is "testclient": not loopback
    return TestClient(_asgi(app, config), client=("192.0.2.7", 4444))


def test_remote_callers_need_an_api_key_and_loopback_does_not():
    gen = FakeGenerator()
    client = app_for(gen, {"ops": "sk-ops"})
    denied = client.post("/admin/activate")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    assert client.post("/admin/activate", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert gen.active is False
    ok = client.post("/admin/activate", headers={"Authorization": "Bearer sk-ops"})
    assert ok.json() == {"active": True, "ready": True, "reason": "ready"} and gen.active
    assert client.get("/admin/stats", headers={"Authorization": "Bearer sk-ops"}).json()["active"]
    loopback = TestClient(client.app, client=("127.0.0.1", 5555))
    assert loopback.post("/admin/deactivate").json()["active"] is False and not gen.active


def test_every_admin_call_is_logged_with_its_key_id(caplog):
    client = app_for(FakeGenerator(), {"ops": "sk-ops"})
    with caplog.at_level(logging.WARNING, logger="duet.master.admin"):
        client.post("/admin/activate", headers={"Authorization": "Bearer sk-ops"})
        client.post("/admin/deactivate", headers={"Authorization": "Bearer sk-wrong"})
    lines = [r.getMessage() for r in caplog.records]
    assert "POST /admin/activate by ops from 192.0.2.7" in lines
    assert "POST /admin/deactivate by - from 192.0.2.7: refused" in lines
    assert all("sk-" not in line for line in lines)


def test_forwarded_headers_never_grant_admin_even_from_a_trusted_proxy():
    """uvicorn would rewrite the client from X-Forwarded-For; the admin check reads the
    TCP peer that RealPeer recorded before."""
    gen = FakeGenerator()
    for trusted in ("", "*"):
        client = app_for(gen, {"ops": "sk-ops"}, forwarded_allow_ips=trusted)
        forged = {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1",
                  "X-Real-IP": "127.0.0.1"}
        assert client.post("/admin/activate", headers=forged).status_code == 403
    assert gen.active is False


def test_loopback_can_be_refused_too():
    """Behind a reverse proxy on the same host every caller is loopback: turn it off."""
    gen = FakeGenerator()
    client = app_for(gen, {"ops": "sk-ops"}, from_loopback=False)
    loopback = TestClient(client.app, client=("127.0.0.1", 5555))
    assert loopback.post("/admin/activate").status_code == 403
    ok = loopback.post("/admin/activate", headers={"Authorization": "Bearer sk-ops"})
    assert ok.status_code == 200 and gen.active


def test_without_configured_keys_only_loopback_may_switch():
    gen = FakeGenerator()
    assert app_for(gen, {}).post("/admin/activate").status_code == 403
    assert gen.active is False


def test_vrrp_events_activate_on_master_and_deactivate_otherwise():
    gen = FakeGenerator()
    client = TestClient(app_for(gen, {}).app, client=("127.0.0.1", 5555))
    for state, active in (("MASTER", True), ("BACKUP", False), ("MASTER", True), ("FAULT", False)):
        r = client.post("/admin/vrrp", json={"vrid": 51, "state": state, "previous": "x"})
        assert r.status_code == 200 and r.json()["active"] is active and gen.active is active
    bad = client.post("/admin/vrrp", json={"vrid": 51})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "state"
    assert client.post("/admin/vrrp", content=b"not json").status_code == 400
