"""`duet serve` keeps its worker alive (issue 8, finding 2), and a stream in flight when the
worker dies pauses and completes on the restarted one (issue 14: recovery_budget_s is on by
default).

A real `duet serve` (local executor, a tiny qwen2 checkpoint of our own): SIGKILL the worker
mid-stream, `duet serve` restarts it, the master re-prefills the stream on it, and the text
equals an uninterrupted run's; then the checkpoint is broken and the worker killed again, and
`duet serve` gives up with exit code 1 instead of staying up half-alive.
"""
import contextlib
import os
import signal
import sys
from pathlib import Path

import httpx
import openai
import pytest

from e2e_harness import Service, wait_ready
from engine.tiny_model import write_tiny_model


def worker_pid(serve_pid: int) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == serve_pid and argv.split(b"\0")[1:4] == [b"-m", b"duet.cli", b"worker"]:
            return int(stat.parent.name)
    return None


def kill_worker(serve: Service) -> int:
    pid = worker_pid(serve.proc.pid)
    assert pid is not None, serve.log()
    os.kill(pid, signal.SIGKILL)
    return pid


def test_worker_killed_is_restarted_then_serve_gives_up_when_it_cannot_start(tmp_path):
    model = write_tiny_model("qwen2", tmp_path / "tiny-qwen2", num_layers=4)
    argv = [sys.executable, "-m", "duet.cli", "serve", "--model", str(model), "--port", "0",
            "--executor", "local", "--max-restarts", "2"]
    serve = Service("duet serve", argv, tmp_path / "serve.log", env={"PYTHONUNBUFFERED": "1"})
    try:
        url = serve.wait_for(r"duet serve: ready at (http://\S+)").group(1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        args = dict(model=model.name, messages=[{"role": "user", "content": "Go on forever."}],
                    max_tokens=48, temperature=0, stream=True)
        uninterrupted = "".join(c.choices[0].delta.content or ""
                                for c in client.chat.completions.create(**args) if c.choices)
        text, reasons = "", []
        for i, chunk in enumerate(client.chat.completions.create(**args)):
            text += "".join(c.delta.content or "" for c in chunk.choices)
            reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
            if i == 3:
                killed = kill_worker(serve)
        assert reasons == ["length"] and text == uninterrupted
        assert "rebuilding 1 sequences" in serve.log()

        wait_ready(url, timeout_s=120)  # restarted, and the master reconnected
        assert worker_pid(serve.proc.pid) not in (None, killed)
        r = client.completions.create(model=model.name, prompt="Hello", max_tokens=4)
        assert r.choices[0].finish_reason in ("length", "stop")

        for weights in model.glob("*.safetensors"):
            weights.unlink()  # the next worker cannot load: restarts cannot help
        kill_worker(serve)
        assert serve.proc.wait(180) == 1, serve.log()
        assert "giving up" in serve.log()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        pid = worker_pid(serve.proc.pid)
        serve.stop(signal.SIGKILL)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it may have followed serve
                os.kill(pid, signal.SIGKILL)
