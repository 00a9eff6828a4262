"""A cold standby: no head until the VRRP agent activates it; 503 + Retry-After while it
loads, /ready showing how far; then it serves; BACKUP makes it refuse again."""
import time

import httpx

from e2e_harness import E2EStack, master_url


def completion(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=30,
                      json={"model": "tiny-qwen2", "prompt": "Cold", "max_tokens": 3})


def test_cold_standby_loads_on_activation_and_says_so(tmp_path, tiny_qwen2):
    stack = E2EStack(tmp_path, tiny_qwen2, 2)
    try:
        standby = stack.spawn_api("standby", role="standby", standby_mode="cold")
        stack.worker.wait_for(r"worker ready")
        url = master_url(standby)
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 200 and "head not loaded" in ready.json()["reason"]
        assert httpx.get(f"{url}/admin/stats").json()["head_loaded"] is False
        refused = completion(url)
        assert refused.status_code == 503 and "not active" in refused.json()["error"]["message"]
        assert "stage [0, 2)" not in standby.log(), "a cold standby loads nothing at start"

        switched = httpx.post(f"{url}/admin/vrrp", json={"state": "MASTER"}).json()
        assert switched["active"] is True and switched["ready"] is False
        assert "loading the head: 0%" in switched["reason"]
        seen_loading = []
        deadline = time.monotonic() + 120
        while (r := completion(url)).status_code != 200:
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            assert int(r.headers["retry-after"]) >= 1
            seen_loading.append(httpx.get(f"{url}/ready").json()["reason"])
            time.sleep(0.05)
        assert seen_loading and r.json()["usage"]["completion_tokens"] == 3
        assert httpx.get(f"{url}/ready").status_code == 200

        httpx.post(f"{url}/admin/vrrp", json={"state": "BACKUP"})
        again = completion(url)
        assert again.status_code == 503 and "not active" in again.json()["error"]["message"]
        assert httpx.post(f"{url}/admin/activate").json()["ready"] is True  # still loaded
        assert completion(url).status_code == 200
    finally:
        stack.stop()
