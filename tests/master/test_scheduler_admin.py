"""The standby switch: who may flip it, and what it flips."""
from fastapi import FastAPI
from fastapi.testclient import TestClient

from master.admin import admin_router
from master.auth import ApiKeyChecker
from master.errors import install_error_handlers


class FakeGenerator:
    def __init__(self):
        self.active = False

    def set_active(self, active):
        self.active = active

    def readiness(self):
        return True, "ready" if self.active else "ready; standby API not active"

    def stats(self):
        return {"running": 0}


def app_for(generator, keys) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(admin_router(generator, ApiKeyChecker(keys)))
    return TestClient(app)  # its client address is "testclient": not loopback


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
