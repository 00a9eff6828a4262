"""One bad request must not hurt anyone else: a live master and worker (local executor).

Regression tests of issue 8's findings: out-of-range fields that used to tear down the
stream to the worker (and every request on it), a large body that froze the event loop, and
an absent max_tokens that meant the whole context.
"""
import json
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from e2e_harness import live_pipeline

SPLIT = 2
MAX_OUTPUT_TOKENS = 48
BODY_LIMIT_BYTES = 12 * 2**20


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_qwen2):
    tmp = tmp_path_factory.mktemp("e2e_hardening")
    with live_pipeline(tmp, tiny_qwen2, SPLIT, max_output_tokens=MAX_OUTPUT_TOKENS,
                       max_request_body_bytes=BODY_LIMIT_BYTES) as url:
        yield SimpleNamespace(url=url)


def post(stack, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{stack.url}{path}", json=body, timeout=120, **kwargs)


class LongStream(threading.Thread):
    """A streaming completion running while the test sends bad requests."""

    def __init__(self, stack):
        super().__init__()
        self.stack, self.events, self.started = stack, [], threading.Event()

    def run(self):
        body = {"prompt": "Once upon a time", "max_tokens": MAX_OUTPUT_TOKENS, "stream": True,
                "temperature": 1.0, "seed": 3, "stop_token_ids": []}
        with httpx.stream("POST", f"{self.stack.url}/v1/completions", json=body,
                          timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                    self.started.set()
        self.started.set()

    def finish_reason(self) -> str | None:
        chunks = [json.loads(e) for e in self.events if e != "[DONE]"]
        reasons = [c["choices"][0]["finish_reason"] for c in chunks if "choices" in c]
        return next((r for r in reasons if r), None)


BAD_FIELDS = [
    ({"top_k": 3371753460639884288}, "top_k"),
    ({"top_k": 2**31}, "top_k"),
    ({"top_k": 10**6}, "top_k"),  # int32-safe but above the vocabulary
    ({"stop_token_ids": [2**31]}, "stop_token_ids"),
    ({"stop_token_ids": [10**6]}, "stop_token_ids"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"max_tokens": 2**31}, "max_tokens"),
    ({"repetition_penalty": 1e39}, "repetition_penalty"),
    ({"prompt": [10**12]}, "prompt"),
    ({"seed": 2**64}, "seed"),
]


def test_out_of_range_fields_get_400_and_never_break_other_streams(stack):
    """Finding 1: top_k 2**31 used to fail every stream in flight with a 503."""
    running = LongStream(stack)
    running.start()
    assert running.started.wait(60)
    for extra, param in BAD_FIELDS:
        r = post(stack, "/v1/completions", {"prompt": "hi", "max_tokens": 8, **extra})
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"].startswith(param), r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    nan = '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    r = httpx.post(f"{stack.url}/v1/chat/completions", content=nan, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", r.text
    running.join(120)
    assert running.finish_reason() in ("length", "stop"), running.events[-3:]
    assert running.events[-1] == "[DONE]"
    assert httpx.get(f"{stack.url}/ready").status_code == 200


def test_template_kwargs_cannot_clash_with_the_request(stack):
    r = post(stack, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "chat_template_kwargs": {"add_generation_prompt": False}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"


def test_max_output_tokens_bounds_absent_and_large_max_tokens(stack):
    """Finding 4: an absent max_tokens used to mean the whole context."""
    chat = {"messages": [{"role": "user", "content": "Tell me everything."}],
            "temperature": 1.0, "seed": 5}
    r = post(stack, "/v1/chat/completions", chat)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] <= MAX_OUTPUT_TOKENS
    if body["choices"][0]["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == MAX_OUTPUT_TOKENS
    r = post(stack, "/v1/chat/completions", {**chat, "max_tokens": MAX_OUTPUT_TOKENS + 1})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "max_tokens"
    assert "max_output_tokens" in r.json()["error"]["message"]


def test_body_over_the_limit_gets_413(stack):
    big = {"prompt": "x" * (BODY_LIMIT_BYTES + 1), "max_tokens": 1}
    r = post(stack, "/v1/completions", big)
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"]["code"] == "request_too_large"
    chunks = iter([json.dumps(big).encode()[i:i + 2**20]
                   for i in range(0, BODY_LIMIT_BYTES + 2**20, 2**20)])
    r = httpx.post(f"{stack.url}/v1/completions", content=chunks, timeout=60,
                   headers={"content-type": "application/json"})  # chunked: no length
    assert r.status_code == 413, r.text[:200]


def probe_while(stack, busy: threading.Thread) -> list[float]:
    """Seconds each /health and /ready took while `busy` runs."""
    took = []
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        client.get("/health")  # connected, so the probes time only the answer
        while busy.is_alive():
            for path in ("/health", "/ready"):
                start = time.perf_counter()
                assert client.get(path).status_code == 200
                took.append(time.perf_counter() - start)
            time.sleep(0.02)
    return took


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "lorem ipsum dolor " * (8 * 2**20 // 18), "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user",
                                            "content": "sit amet " * (8 * 2**20 // 9)}]}),
])
def test_probes_answer_while_an_8_mb_prompt_is_tokenized(stack, path, body):
    """Finding 3: tokenizing used to run on the event loop, /health stalled for seconds."""
    payload = json.dumps(body).encode()
    idle = threading.Thread(target=time.sleep, args=(1.0,))
    idle.start()
    idle_worst_s = max(probe_while(stack, idle))
    with httpx.Client(base_url=stack.url, timeout=300) as client:
        replies = []
        sender = threading.Thread(target=lambda: replies.append(client.post(
            path, content=payload, headers={"content-type": "application/json"})))
        sender.start()
        time.sleep(0.3)  # the body is in and being tokenized
        took = probe_while(stack, sender)
    assert replies[0].status_code == 400, replies[0].text[:300]
    assert replies[0].json()["error"]["code"] == "context_length_exceeded"
    assert len(took) >= 10, "the prompt was tokenized too fast to probe anything"
    # 50 ms on an idle machine (the loop's longest stall measured in-process: 44 ms, parsing
    # the 8 MB of JSON). A shared 2-core box makes every probe slow, so the bound grows with
    # the slowest probe while nothing was tokenized, and one probe in twenty may hit a load
    # spike; before the fix a probe waited out the whole tokenizing (4.5-6.3 s).
    took.sort()
    assert took[int(len(took) * 0.95)] < 0.05 + 2 * idle_worst_s, (took[-5:], idle_worst_s)
    assert took[-1] < 1.0, took[-5:]
