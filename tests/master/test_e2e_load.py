"""`duet load` against a real tiny `duet serve` for a few seconds: every stream completes, the
report has TTFT and inter-token percentiles, the servers' memory (the process tree under the
given pid) and KV over time, KV back to zero at the end, a progress line and a PNG."""
import json
import signal
import subprocess
import sys

from e2e_harness import Service
from engine.tiny_model import write_tiny_model


def test_duet_load_reports_latency_memory_and_kv_and_plots(tmp_path):
    model = write_tiny_model("qwen2", tmp_path / "tiny-qwen2", num_layers=2)
    serve = Service("duet serve", [sys.executable, "-m", "duet.cli", "serve", "--model",
                                   str(model), "--port", "0", "--executor", "local"],
                    tmp_path / "serve.log", env={"PYTHONUNBUFFERED": "1"})
    try:
        url = serve.wait_for(r"duet serve: ready at (http://\S+)").group(1)
        out = tmp_path / "run"
        res = subprocess.run(
            [sys.executable, "-m", "duet.cli", "load", "--url", url, "--clients", "4",
             "--minutes", "0.1", "--prompt-words", "4:40", "--max-tokens", "4:24",
             "--pid", str(serve.proc.pid), "--sample-s", "0.5", "--out", str(out)],
            capture_output=True, text=True, timeout=240)
    finally:
        serve.stop(signal.SIGTERM)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "done" in res.stderr and "tok/s" in res.stderr  # the progress line
    report = json.loads(out.with_suffix(".json").read_text())
    s = report["summary"]
    assert s["requests"] == s["completed"] >= 8 and s["failures"] == {}
    assert s["tokens_per_s"] > 0 and s["output_tokens"] >= s["completed"]
    assert 0 < s["ttft_s"]["p50"] <= s["ttft_s"]["p99"]
    assert 0 < s["itl_s"]["p50"] <= s["itl_s"]["p99"]
    assert {name.split()[0] for name in s["memory"]} == {"serve", "worker"}
    assert all(g["after_warmup_bytes"] > 10 * 2**20 for g in s["memory"].values())
    assert any(sample.get("kv_usage") for sample in report["samples"])  # KV was used
    assert s["kv_at_end"]["head_kv_used_tokens"] == s["kv_at_end"]["worker_kv_used_tokens"] == 0
    assert "| TTFT p50 / p90 / p99 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
