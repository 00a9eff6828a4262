"""Worker loss and recovery, handshake refusal and the standby switch, with real processes."""
import signal
import threading
import time

import httpx
import openai
import pytest

from e2e_harness import e2e_stack, wait_not_ready, wait_ready
from e2e_reference import Reference
from master.bundle import ModelBundle

SPLIT = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_qwen2):
    with e2e_stack(tmp_path_factory.mktemp("e2e_failover"), tiny_qwen2, SPLIT, standby={},
                   reconnect_max_s=0.5,
                   recovery_budget_s=0) as stack:  # fail at once: what is tested here
        bundle = ModelBundle.load(tiny_qwen2)
        stack.tok, stack.ref = bundle.tokenizer, Reference(tiny_qwen2, bundle.stop_token_ids)
        yield stack


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)


def greedy_text(stack, text: str, n: int) -> str:
    ids = stack.ref.greedy(stack.tok.encode(text), n)
    return stack.tok.decode([i for i in ids if i not in stack.ref.stop_ids])


def test_worker_gone_fails_fast_with_503_then_the_master_reconnects(stack):
    errors, chunks, started = [], [], threading.Event()

    def long_stream():
        try:
            for chunk in client(stack.url).completions.create(
                    model=stack.model.name, prompt="Go on", max_tokens=3000, stream=True):
                chunks.append(chunk)
                started.set()
        except openai.APIError as e:
            errors.append(e)

    streamer = threading.Thread(target=long_stream)
    streamer.start()
    assert started.wait(30), f"the stream never started: {errors}"
    stack.worker.stop(signal.SIGKILL)
    killed = time.monotonic()
    streamer.join(10)
    assert not streamer.is_alive() and errors, "the running stream must end with an error"
    assert 0 < len(chunks) < 3000  # it was under way, and it did not run to its end
    assert time.monotonic() - killed < 10

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client(stack.url).completions.create(model=stack.model.name, prompt="hi", max_tokens=2)
    assert e.value.status_code == 503 and time.monotonic() - started < 2.0
    assert set(e.value.body) >= {"message", "type", "param", "code"}
    ready = httpx.get(f"{stack.url}/ready")
    assert ready.status_code == 503 and "worker" in ready.json()["reason"]

    stack.restart_worker("worker-again")
    wait_ready(stack.url)
    r = client(stack.url).completions.create(model=stack.model.name, prompt="Hello again",
                                             max_tokens=6, temperature=0)
    assert r.choices[0].text == greedy_text(stack, "Hello again", 6)


def test_mismatched_split_is_refused_with_the_reason(stack):
    master, url = stack.start_api("wrong", split=SPLIT + 1)
    try:
        assert "split_layer: expected 3, got 2" in wait_not_ready(url, "split_layer")
        with pytest.raises(openai.APIStatusError) as e:
            client(url).completions.create(model=stack.model.name, prompt="hi", max_tokens=2)
        assert e.value.status_code == 503 and "split_layer" in e.value.message
    finally:
        master.stop()


def test_standby_serves_only_while_activated(stack):
    url = stack.standby_url
    assert httpx.get(f"{url}/health").status_code == 200
    wait_ready(url)  # /ready: the standby could serve (the VRRP health check asks this)
    assert "not active" in httpx.get(f"{url}/ready").json()["reason"]
    with pytest.raises(openai.APIStatusError) as e:
        client(url).completions.create(model=stack.model.name, prompt="hi", max_tokens=2)
    assert e.value.status_code == 503 and "not active" in e.value.message

    event = {"vrid": 51, "state": "MASTER", "previous": "BACKUP", "priority": 100}
    assert httpx.post(f"{url}/admin/vrrp", json=event).json()["active"] is True
    r = client(url).completions.create(model=stack.model.name, prompt="Standby speaks",
                                       max_tokens=5, temperature=0)
    assert r.choices[0].text == greedy_text(stack, "Standby speaks", 5)

    event = {"vrid": 51, "state": "BACKUP", "previous": "MASTER", "priority": 100}
    assert httpx.post(f"{url}/admin/vrrp", json=event).json()["active"] is False
    with pytest.raises(openai.APIStatusError) as e:
        client(url).completions.create(model=stack.model.name, prompt="hi", max_tokens=2)
    assert e.value.status_code == 503
    assert httpx.post(f"{url}/admin/activate").json()["active"] is True
    assert httpx.get(f"{url}/health").status_code == 200
