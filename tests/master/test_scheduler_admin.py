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
        return (True, "ready") if self.active else (False, "standby API: not active")

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
