"""A master listening beyond loopback, reached from a non-loopback address: it warns that it
has no keys, and a forged X-Forwarded-For does not make a remote caller an admin, even with
uvicorn's FORWARDED_ALLOW_IPS=* in its environment. The master runs in a network namespace
of its own (a veth holds 10.98.0.1), so nothing is exposed on the host."""
import os
import shutil
import subprocess

import pytest

from e2e_harness import start_master
from e2e_netns import netns_request

ADDRESS = "10.98.0.1"


@pytest.fixture
def netns():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    from vrrp.netns import run_ip

    name = f"duet-exposed-{os.getpid()}"
    run_ip("netns", "add", name)
    try:
        run_ip("-n", name, "link", "set", "lo", "up")
        run_ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        run_ip("-n", name, "addr", "add", f"{ADDRESS}/24", "dev", "v0")
        for link in ("v0", "v1"):
            run_ip("-n", name, "link", "set", link, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


def test_no_keys_beyond_loopback_warns_and_forged_forwarded_for_is_refused(
        tmp_path, tiny_qwen2, netns):
    model = tiny_qwen2
    # no worker: the admin switch and stats work without one
    master, url = start_master(tmp_path, model, 2, 1, host="0.0.0.0", netns=netns,
                               env={"FORWARDED_ALLOW_IPS": "*"})
    try:
        port = int(url.rsplit(":", 1)[1])
        assert "beyond loopback, without API keys" in master.log()
        forged = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
                  "Forwarded": "for=127.0.0.1"}
        remote = f"http://{ADDRESS}:{port}"
        for path in ("/admin/deactivate", "/admin/activate", "/admin/vrrp"):
            status, body = netns_request(netns, "POST", remote + path, {"state": "BACKUP"},
                                         headers=forged)
            assert status == 403 and body["error"]["code"] == "forbidden", (path, body)
        status, stats = netns_request(netns, "GET", f"http://127.0.0.1:{port}/admin/stats")
        assert status == 200 and stats["active"] is True
        assert any("without API keys" in w for w in stats["warnings"])
        assert f"POST /admin/deactivate by - from {ADDRESS}: refused" in master.log()
    finally:
        master.stop()
