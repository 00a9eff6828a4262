"""The two-host guide's failover path end to end: on host B (a network namespace) a worker,
a standby API and a real VRRP agent whose notify_url is the standby's /admin/vrrp. B taking
the VIP activates the standby (it answers completions); A coming back with a higher priority
takes the VIP and the standby goes back to 503."""
import os
import shutil
import time

import pytest

from e2e_harness import master_url, spawn_master, spawn_worker
from e2e_netns import netns_request

SPLIT = 2


@pytest.fixture
def lab():
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("bridge") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    from vrrp.lab import Lab

    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def wait_status(ns: str, url: str, body: dict, want: int, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status, reply = netns_request(ns, "POST", url, body)
        if status == want:
            return reply
        assert time.monotonic() < deadline, (status, reply)
        time.sleep(0.1)


def test_vrrp_master_event_activates_the_standby_and_backup_deactivates_it(
        tmp_path, tiny_qwen2, lab):
    model = tiny_qwen2
    host_b = lab.ns("b")
    services = []
    try:
        worker, port = spawn_worker(tmp_path, model, SPLIT, netns=host_b)  # both at once
        services.append(worker)
        standby = spawn_master(tmp_path, model, SPLIT, port, name="standby", role="standby",
                               netns=host_b, reconnect_max_s=0.5)
        services.append(standby)
        worker.wait_for(r"worker ready")
        url = master_url(standby)
        request = {"model": model.name, "prompt": "after the failover", "max_tokens": 4}
        refused = wait_status(host_b, f"{url}/v1/completions", request, 503)
        assert "not active" in refused["error"]["message"]

        lab.start_agent("b", wait_state="MASTER", notify_url=f"{url}/admin/vrrp")
        served = wait_status(host_b, f"{url}/v1/completions", request, 200, timeout_s=10)
        assert served["usage"]["completion_tokens"] == 4
        assert "VRRP state MASTER" in standby.log()

        lab.start_agent("a")  # priority 150 preempts: B goes back to BACKUP
        refused = wait_status(host_b, f"{url}/v1/completions", request, 503, timeout_s=10)
        assert "not active" in refused["error"]["message"]
        assert "VRRP state BACKUP" in standby.log()
    finally:
        for service in reversed(services):
            service.stop()
