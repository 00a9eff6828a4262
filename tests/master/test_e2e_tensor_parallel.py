"""A master and a worker whose stages each span two tensor-parallel ranks (gloo on the CPU),
over real gRPC and HTTP: the API's greedy tokens equal the single-process engine's, the ranks
run with NVLink multicast off, and a killed rank gives 503s and a restart, never a hang."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from e2e_harness import e2e_stack
from e2e_reference import Reference
from engine.parallel import NO_MULTICAST_ENV
from engine.tiny_model import write_tiny_model
from master.bundle import ModelBundle

SPLIT = 2
TP = {"tensor_parallel_size": 2, "tp_timeout_s": 30.0, "torch_threads": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e_tp")
    model = write_tiny_model("deepseek_v3", tmp / "tiny-v3", num_layers=4)
    with e2e_stack(tmp, model, SPLIT, worker=TP, **TP) as running:
        bundle = ModelBundle.load(model)
        yield SimpleNamespace(url=running.url, worker=running.worker, master=running.master,
                              tok=bundle.tokenizer, name=model.name,
                              ref=Reference(model, bundle.stop_token_ids))


def followers(parent_pid: int) -> list[int]:
    """Pids of the rank processes a process started (engine/rank_follower.py)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent_pid and b"engine.rank_follower" in cmdline:
            out.append(int(stat.parent.name))
    return out


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


def complete(stack, prompt: list[int], max_tokens: int) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/completions", timeout=120.0, json={
        "model": stack.name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})


def test_greedy_completion_equals_the_single_process_engine(stack):
    prompt = stack.tok.encode("The capital of France is")
    want = [i for i in stack.ref.greedy(prompt, 10) if i not in stack.ref.stop_ids]
    r = complete(stack, prompt, 10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == stack.tok.decode(want)


def test_both_stages_start_their_ranks_with_nvlink_multicast_off(stack):
    for service in (stack.worker, stack.master):
        ranks = followers(service.proc.pid)
        assert len(ranks) == 1, f"{service.name}: expected one follower rank, found {ranks}"
        env = environ(ranks[0])
        assert {k: env.get(k) for k in NO_MULTICAST_ENV} == NO_MULTICAST_ENV


def test_a_killed_worker_rank_answers_503_then_the_worker_restarts_its_ranks(stack):
    prompt = stack.tok.encode("Once upon a time")
    before = complete(stack, prompt, 6)
    assert before.status_code == 200, before.text
    (rank,) = followers(stack.worker.proc.pid)
    os.kill(rank, signal.SIGKILL)
    started = time.monotonic()
    failed = complete(stack, prompt, 6)
    assert failed.status_code == 503, failed.text
    assert time.monotonic() - started < 20, "the failure must be fast, not a timeout"
    stack.worker.wait_for(r"tail ranks restarted", timeout_s=120)
    deadline = time.monotonic() + 60
    while (after := complete(stack, prompt, 6)).status_code != 200:
        assert time.monotonic() < deadline, after.text
        time.sleep(0.5)
    assert after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]
    assert followers(stack.worker.proc.pid) != [rank]
