"""The handshake compares checkpoint manifests: a host whose copy differs is refused."""
import shutil

import httpx

from e2e_harness import master_url, spawn_master, spawn_worker, wait_not_ready
from engine.manifest import compute_manifest
from engine.tiny_model import write_tiny_model


def test_handshake_refuses_a_worker_whose_checkpoint_bytes_differ(tmp_path):
    source = write_tiny_model("qwen2", tmp_path / "tiny-qwen2", num_layers=2)
    compute_manifest(source).write(source)
    copy = tmp_path / "host-b" / "tiny-qwen2"
    shutil.copytree(source, copy)
    # Host B's copy: one weight byte flipped (same sizes, so the fingerprint cannot tell),
    # and its manifest written from those bytes, as `duet checkpoint verify --write` would.
    weights = sorted(copy.glob("*.safetensors"))[-1]
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    compute_manifest(copy).write(copy)

    worker, port = spawn_worker(tmp_path, copy, 1)  # both start at once
    services = [worker, spawn_master(tmp_path, source, 1, port, reconnect_max_s=0.5)]
    try:
        worker.wait_for(r"worker ready")
        url = master_url(services[1])
        reason = wait_not_ready(url, "manifest")
        assert f"first differing file: {weights.name}" in reason
        r = httpx.post(f"{url}/v1/completions", json={"model": "tiny-qwen2", "prompt": "hi",
                                                      "max_tokens": 2})
        assert r.status_code == 503 and weights.name in r.json()["error"]["message"]
        # Equal manifests are served: the lab (tests/lab) runs both hosts on a SHA256SUMS.
    finally:
        for service in reversed(services):
            service.stop()
