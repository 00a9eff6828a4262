"""Resumable streams with real processes: a client that loses its stream re-POSTs with the
same X-Request-Id and Last-Event-ID and gets every event exactly once, from the same master
(the run is attached, not rerun) and from a second API on the same worker after the first
was SIGKILLed (the worker hands it the sequences: greedy and seeded text as if nothing
happened); the openai SDK reads the streams with ids unchanged."""
from __future__ import annotations

import json
import signal
import time
import uuid
from types import SimpleNamespace

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from e2e_harness import e2e_stack, wait_ready
from master.resume_client import ResumingStream

SPLIT = 2
GREEDY = dict(temperature=0)
SEEDED = dict(temperature=1.0, seed=11, top_k=8)  # top_k: see test_e2e_recovery.request_args


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_qwen2):
    with e2e_stack(tmp_path_factory.mktemp("e2e_resume"), tiny_qwen2, SPLIT,
                   standby={}) as stack:
        httpx.post(f"{stack.standby_url}/admin/activate", timeout=10).raise_for_status()
        wait_ready(stack.standby_url)
        stack.name = tiny_qwen2.name
        yield stack


def body(prompt: str, max_tokens: int, **sampling) -> dict:
    return dict(model="tiny-qwen2", prompt=prompt, max_tokens=max_tokens, stream=True,
                **sampling)


def read_events(url: str, payload: dict, request_id: str, last_id: str | None = None,
                stop_after: int | None = None) -> list:
    """The SSE events of one POST to /v1/completions (the connection is closed after
    `stop_after` events)."""
    headers = {"X-Request-Id": request_id}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    out = []
    with httpx.Client(timeout=60) as http:
        with connect_sse(http, "POST", f"{url}/v1/completions", json=payload,
                         headers=headers) as source:
            assert source.response.status_code == 200, source.response.read()
            assert source.response.headers["x-request-id"] == request_id
            for event in source.iter_sse():
                out.append(event)
                if len(out) == stop_after:
                    break
    return out


def text_of(events) -> str:
    return "".join(json.loads(e.data)["choices"][0]["text"] for e in events if e.data != "[DONE]")


def assert_whole(events, request_id: str) -> None:
    """Every event once, in order, ids counting from 0, [DONE] last."""
    assert [e.id for e in events] == [f"{request_id}:{i}" for i in range(len(events))]
    assert events[-1].data == "[DONE]"


def test_dropped_connection_resumes_on_the_same_run(stack):
    payload = body("Resume me please", 40, temperature=1.0)  # unseeded: a rerun would differ
    rid = f"same-{uuid.uuid4().hex}"
    head = read_events(stack.url, payload, rid, stop_after=5)
    rest = read_events(stack.url, payload, rid, last_id=head[-1].id)
    assert_whole(head + rest, rid)
    again = read_events(stack.url, payload, rid)  # from the start: the kept run, not a rerun
    assert [(e.id, e.data) for e in again] == [(e.id, e.data) for e in head + rest]


def test_non_streaming_repost_returns_the_same_completion_and_ids_are_checked(stack):
    payload = {**body("Say it twice", 12, temperature=1.0), "stream": False}
    headers = {"X-Request-Id": f"once-{uuid.uuid4().hex}"}
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        first = http.post("/v1/completions", json=payload, headers=headers)
        second = http.post("/v1/completions", json=payload, headers=headers)
        assert first.status_code == 200 and first.content == second.content
        other = http.post("/v1/completions", json={**payload, "max_tokens": 3}, headers=headers)
        assert other.status_code == 409 and other.json()["error"]["param"] == "X-Request-Id"
        bad = http.post("/v1/completions", json=payload, headers={"X-Request-Id": "a b"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Request-Id"
        wrong = http.post("/v1/completions", json={**payload, "stream": True},
                          headers={**headers, "Last-Event-ID": "another:3"})
        assert wrong.status_code == 400


def test_openai_sdk_and_resume_client_read_streams_with_ids(stack):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none", max_retries=0)
    sdk = "".join(c.choices[0].text for c in client.completions.create(
        model=stack.name, prompt="Both agree", max_tokens=12, temperature=0, stream=True))
    helper = ResumingStream(stack.url, body("Both agree", 12, **GREEDY), path="/v1/completions")
    assert "".join(c["choices"][0]["text"] for c in helper) == sdk and helper.reconnects == 0


def test_standby_resumes_streams_of_a_killed_master_with_identical_text(stack):
    cases = {f"kill-{name}-{uuid.uuid4().hex}": body(f"The {name} story goes", 80, **sampling)
             for name, sampling in (("greedy", GREEDY), ("seeded", SEEDED))}
    heads = {rid: read_events(stack.url, p, rid, stop_after=3) for rid, p in cases.items()}
    stack.master.stop(signal.SIGKILL)
    stack.worker.wait_for(r"2 sequences kept .* for adoption", timeout_s=30)
    for rid, payload in cases.items():
        rest = read_events(stack.standby_url, payload, rid, last_id=heads[rid][-1].id)
        assert_whole(heads[rid] + rest, rid)
        reference = read_events(stack.standby_url, payload, f"ref-{uuid.uuid4().hex}")
        assert text_of(heads[rid] + rest) == text_of(reference)
    assert stack.worker.log().count(" adopted ") == 2  # continued, not restarted
