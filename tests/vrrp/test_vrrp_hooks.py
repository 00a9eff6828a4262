"""Health checks, notify hooks and status reporting, against real local HTTP servers."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import pytest
from prometheus_client import generate_latest

from vrrp.config import HealthConfig
from vrrp.health import HealthCheck, effective_priority
from vrrp.notify import Notifier
from vrrp.state import State
from vrrp.status import Status


class TinyHttp:
    """A one-route-per-request HTTP/1.0 server on 127.0.0.1 that records what it gets."""

    def __init__(self):
        self.code = 200
        self.body = b""
        self.requests: list[tuple[str, bytes]] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length")), 0)
        body = await reader.readexactly(length) if length else b""
        self.requests.append((head.split(b" ")[1].decode(), body))
        writer.write(f"HTTP/1.0 {self.code} X\r\nContent-Length: {len(self.body)}\r\n\r\n"
                     .encode() + self.body)
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("base, weight, healthy, expected", [
    (150, -60, True, 150), (150, -60, False, 90), (100, 20, True, 120),
    (100, 20, False, 100), (250, 20, True, 254), (10, -60, False, 1), (255, -60, False, 255),
])
def test_effective_priority(base, weight, healthy, expected):
    assert effective_priority(base, weight, healthy) == expected


async def test_health_rise_and_fall_against_http():
    changes = []
    async with TinyHttp() as srv:
        cfg = HealthConfig(url=f"http://127.0.0.1:{srv.port}/ready", interval_s=0.01,
                           timeout_s=0.5, rise=3, fall=2)
        check = HealthCheck(cfg, changes.append)
        task = asyncio.create_task(check.run())
        try:
            await asyncio.sleep(0.1)
            assert changes == [] and check.healthy
            srv.code = 503
            await _until(lambda: changes == [False])
            srv.code = 200
            await _until(lambda: changes == [False, True])
        finally:
            task.cancel()
    assert all(path == "/ready" for path, _ in srv.requests)


async def test_a_draining_api_is_failing_at_once_and_told_once():
    changes, drains = [], []
    async with TinyHttp() as srv:
        cfg = HealthConfig(url=f"http://127.0.0.1:{srv.port}/ready", interval_s=0.01,
                           timeout_s=0.5, rise=2, fall=100)  # a plain failure: never here
        check = HealthCheck(cfg, changes.append, lambda: drains.append(len(srv.requests)))
        task = asyncio.create_task(check.run())
        try:
            await _until(lambda: len(srv.requests) >= 2)
            srv.code, srv.body = 503, b'{"ready": false, "draining": true}'
            draining_from = len(srv.requests) + 1
            await _until(lambda: changes == [False])
            assert drains and drains[0] <= draining_from + 1  # at the first draining answer
            await _until(lambda: len(srv.requests) > draining_from + 5)
            srv.code, srv.body = 200, b""
            await _until(lambda: changes == [False, True])
        finally:
            task.cancel()
    assert len(drains) == 1 and not check.draining


def test_health_hysteresis_counts_consecutive_results():
    changes = []
    check = HealthCheck(HealthConfig(url="http://127.0.0.1:1/ready", rise=2, fall=2),
                        changes.append)
    for ok in (False, True, False, True):  # never two in a row
        check.record(ok)
    assert changes == []
    check.record(False)
    check.record(False)
    assert changes == [False]


async def test_unreachable_health_url_counts_as_failure():
    cfg = HealthConfig(url="http://127.0.0.1:9/ready", timeout_s=0.2, fall=1)
    check = HealthCheck(cfg, lambda ok: None)
    async with httpx.AsyncClient(timeout=0.2) as client:
        assert await check.probe(client) is False


async def _until(predicate, timeout_s: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_notify_runs_commands_then_posts_in_order(tmp_path):
    out = tmp_path / "hook.log"
    script = (f"import os, sys; open({str(out)!r}, 'a')"
              ".write(sys.argv[1] + ' ' + os.environ['DUET_VRRP_PRIORITY'] + '\\n')")
    async with TinyHttp() as srv:
        notifier = Notifier(((sys.executable, "-c", script),), f"http://127.0.0.1:{srv.port}/hook",
                            5.0, vrid=51)
        notifier.notify("BACKUP", "INITIALIZE", 100, "startup")
        notifier.notify("MASTER", "BACKUP", 100, "master down")
        await notifier.flush(10.0)
    assert out.read_text() == "BACKUP 100\nMASTER 100\n"
    posted = [json.loads(body) for _, body in srv.requests]
    assert [(p["state"], p["previous"], p["vrid"]) for p in posted] == \
        [("BACKUP", "INITIALIZE", 51), ("MASTER", "BACKUP", 51)]


async def test_failing_hooks_do_not_stop_later_ones(tmp_path):
    async with TinyHttp() as srv:
        srv.code = 500
        notifier = Notifier((("/nonexistent/hook",), (sys.executable, "-c", "raise SystemExit(3)")),
                            f"http://127.0.0.1:{srv.port}/hook", 5.0, vrid=51)
        notifier.notify("MASTER", "BACKUP", 100, "x")
        notifier.notify("BACKUP", "MASTER", 100, "y")
        await notifier.flush(10.0)
    assert len(srv.requests) == 2


def test_status_file_and_metrics(tmp_path):
    status = Status(51, str(tmp_path / "status.json"))
    status.set_state(State.BACKUP)
    status.set_state(State.MASTER)
    status.set_priority(150)
    status.sent(3)
    status.received()
    status.drop("ttl")
    status.drop("ttl")
    status.drop("checksum")
    status.write()
    data = json.loads((tmp_path / "status.json").read_text())
    assert data["state"] == "MASTER" and data["transitions"] == 2
    assert data["adverts_dropped"] == {"ttl": 2, "checksum": 1} and data["adverts_sent"] == 3
    text = generate_latest(status.registry).decode()
    assert 'vrrp_state{state="MASTER"} 1.0' in text
    assert 'vrrp_adverts_dropped_total{reason="ttl"} 2.0' in text
    assert "vrrp_priority 150.0" in text
    # a second agent in the same process has its own registry
    assert "vrrp_adverts_sent_total 0.0" in generate_latest(Status(52).registry).decode()


def test_metrics_served_over_http(tmp_path):
    status = Status(51)
    status.serve_metrics("127.0.0.1", 0)
    try:
        port = status._server.server_address[1]
        status.drop("vrid")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
        assert 'vrrp_adverts_dropped_total{reason="vrid"} 1.0' in text
    finally:
        status.close()
