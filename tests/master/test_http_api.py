"""The OpenAI routes through the ASGI app (no sockets), with a deterministic fake generator."""
import json
import logging

import httpx
import pytest

from http_fakes import FakeGenerator, UnreachableGenerator, make_model_dir
from master.app import create_app
from master.bundle import ModelBundle
from master.config import MasterConfig
from master.generation import QueueFull, SequenceFailed

REPLY = "Hello there! 你好 🤖"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "deepseek")


@pytest.fixture(scope="module")
def bundle(model_dir) -> ModelBundle:
    return ModelBundle.load(model_dir)


def serve(bundle, generator, **config) -> httpx.AsyncClient:
    # The app reads the checkpoint only through the bundle; model_dir is for `duet master`.
    cfg = MasterConfig(model_dir="unused", served_model_name="tiny", **config)
    app = create_app(cfg, generator, bundle)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def fake(bundle, reply=REPLY, **kw) -> FakeGenerator:
    return FakeGenerator(bundle.tokenizer, reply, eos_id=1, **kw)


def sse_events(text: str) -> list:
    lines = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def test_chat_completion_shape_usage_and_generation_defaults(bundle):
    gen = fake(bundle)
    async with serve(bundle, gen) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": REPLY}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    (req,) = gen.requests
    prompt = bundle.chat_template.render(CHAT["messages"])
    assert req.prompt_token_ids == bundle.chat_template.encode(prompt)
    reply_tokens = len(gen.reply_ids(req)) + 1  # the EOS counts, as in vLLM
    assert body["usage"] == {"prompt_tokens": len(req.prompt_token_ids),
                             "completion_tokens": reply_tokens,
                             "total_tokens": len(req.prompt_token_ids) + reply_tokens}
    # generation_config.json's temperature 0.6 / top_p 0.95 fill unset fields; EOS stops.
    assert (req.params.temperature, req.params.top_p) == (0.6, 0.95)
    assert 1 in req.params.stop_token_ids and req.params.seed is None
    assert req.max_tokens == bundle.max_model_len - len(req.prompt_token_ids)


async def test_request_fields_override_defaults(bundle):
    gen = fake(bundle)
    fields = {"temperature": 0, "top_p": 0.5, "top_k": 3, "min_p": 0.1, "seed": 11,
              "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.2,
              "max_tokens": 50, "max_completion_tokens": 4, "stop_token_ids": [7],
              "user": "u", "store": False, "metadata": {"k": "v"}, "service_tier": "auto"}
    async with serve(bundle, gen) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, **fields})
    assert r.status_code == 200, r.text
    p = gen.requests[0].params
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.seed) == (0, 0.5, 3, 0.1, 11)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -0.5, 1.2)
    assert p.prompt_token_ids == tuple(gen.requests[0].prompt_token_ids)  # for the penalty
    assert set(p.stop_token_ids) == {1, 7} and gen.requests[0].max_tokens == 4
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 4


async def test_streamed_chat_is_role_then_deltas_then_finish_then_usage(bundle):
    gen = fake(bundle)
    req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with serve(bundle, gen) as c:
        r = await c.post("/v1/chat/completions", json=req)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1])
    assert text == REPLY
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == \
        len(gen.reply_ids(gen.requests[0])) + 1


async def test_n_choices_get_seed_plus_index_and_their_own_text(bundle):
    gen = fake(bundle, reply=lambda req: f"seed {req.params.seed}")
    async with serve(bundle, gen) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "n": 3, "seed": 40})
        s = await c.post("/v1/chat/completions", json={**CHAT, "n": 2, "seed": 1,
                                                       "stream": True})
    texts = [ch["message"]["content"] for ch in r.json()["choices"]]
    assert texts == ["seed 40", "seed 41", "seed 42"]
    assert [ch["index"] for ch in r.json()["choices"]] == [0, 1, 2]
    events = sse_events(s.text)
    for i in range(2):
        deltas = [e["choices"][0] for e in events if e["choices"][0]["index"] == i]
        assert "".join(d["delta"].get("content", "") for d in deltas) == f"seed {1 + i}"
        assert deltas[-1]["finish_reason"] == "stop"


async def test_stop_string_across_tokens_ends_the_choice_and_frees_the_sequence(bundle):
    gen = fake(bundle, reply="one, two, three, four, five, six")
    async with serve(bundle, gen) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "stop": ["o, th"]})
        s = await c.post("/v1/completions", json={"prompt": "count", "stream": True,
                                                  "stop": ", f", "max_tokens": 40})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "one, tw" and choice["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] < len(gen.reply_ids(gen.requests[0]))
    events = sse_events(s.text)
    assert "".join(e["choices"][0]["text"] for e in events) == "one, two, three"
    assert gen.open == set() and len(gen.closed) == 2


async def test_chat_logprobs_carry_token_text_bytes_and_alternatives(bundle):
    gen = fake(bundle)
    async with serve(bundle, gen) as c:
        r = await c.post("/v1/chat/completions",
                         json={**CHAT, "logprobs": True, "top_logprobs": 2})
    content = r.json()["choices"][0]["logprobs"]["content"]
    ids = gen.reply_ids(gen.requests[0]) + [1]
    assert len(content) == len(ids) == r.json()["usage"]["completion_tokens"]
    assert bytes(b for e in content[:-1] for b in e["bytes"]) == REPLY.encode()
    for i, (entry, token) in enumerate(zip(content, ids)):
        assert entry["logprob"] == pytest.approx(-(i + 1) / 10)
        assert entry["token"] == bundle.tokenizer.token_text(token)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(
            [entry["logprob"], entry["logprob"] - 1])
    assert gen.requests[0].params.logprobs == 2


async def test_completions_forms_legacy_logprobs_and_default_max_tokens(bundle):
    gen = fake(bundle, reply="a b c d e f g h i j k l m n o p q r s t u v w x y z")
    tok = bundle.tokenizer
    async with serve(bundle, gen) as c:
        one = await c.post("/v1/completions", json={"prompt": "Letters:", "logprobs": 1})
        many = await c.post("/v1/completions", json={
            "prompt": [tok.encode("x"), tok.encode("y z")], "n": 2, "max_tokens": 3})
    body = one.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 16
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] and len(lp["token_logprobs"]) == 16
    assert lp["text_offset"] == [sum(map(len, lp["tokens"][:i])) for i in range(16)]
    assert all(len(top) == 1 for top in lp["top_logprobs"])
    assert gen.requests[0].prompt_token_ids == tok.encode("Letters:")
    choices = many.json()["choices"]
    assert [ch["index"] for ch in choices] == [0, 1, 2, 3]
    assert [r.prompt_token_ids for r in gen.requests[1:]] == [tok.encode("x")] * 2 + \
        [tok.encode("y z")] * 2
    assert many.json()["usage"]["prompt_tokens"] == 1 + len(tok.encode("y z"))


async def test_r1_reasoning_is_split_from_content(tmp_path):
    bundle = ModelBundle.load(make_model_dir(tmp_path, "deepseek", r1_open_think=True))
    gen = fake(bundle, reply="2 and 2 make 4.</think>\n\nThe answer is 4.")
    async with serve(bundle, gen) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
        s = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    message = r.json()["choices"][0]["message"]
    assert message["reasoning_content"] == "2 and 2 make 4."
    assert message["content"] == "\n\nThe answer is 4."
    deltas = [e["choices"][0]["delta"] for e in sse_events(s.text)]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "2 and 2 make 4."
    assert "".join(d.get("content", "") for d in deltas) == "\n\nThe answer is 4."


async def test_models_health_ready_and_metrics(bundle):
    gen = fake(bundle)
    async with serve(bundle, gen) as c:
        models = (await c.get("/v1/models")).json()
        assert models["data"][0]["id"] == "tiny" and models["object"] == "list"
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/ready")).json() == {"ready": True, "reason": "ready",
                                                  "draining": False}
        await c.post("/v1/chat/completions", json=CHAT)
        metrics = (await c.get("/metrics")).text
    tokens = len(gen.reply_ids(gen.requests[0])) + 1
    assert f'vllm:generation_tokens_total{{model_name="tiny"}} {float(tokens)}' in metrics
    assert 'vllm:time_to_first_token_seconds_count{model_name="tiny"} 1.0' in metrics
    assert f'vllm:time_per_output_token_seconds_count{{model_name="tiny"}} {tokens - 1.0}' \
        in metrics
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:e2e_request_latency_seconds", "vllm:prompt_tokens_total",
                 "vllm:gpu_cache_usage_perc", "duet:pipeline_hop_seconds"):
        assert name in metrics


async def test_not_ready_and_unreachable_worker_are_503_with_the_reason(bundle):
    async with serve(bundle, UnreachableGenerator(bundle.tokenizer)) as c:
        ready = await c.get("/ready")
        r = await c.post("/v1/chat/completions", json=CHAT)
        s = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert ready.status_code == 503 and "refused" in ready.json()["reason"]
    for resp in (r, s):
        assert resp.status_code == 503
        err = resp.json()["error"]
        assert "refused" in err["message"] and err["code"] == "pipeline_unavailable"
        assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body,param,fragment", [
    ({**CHAT, "temperature": 3}, "temperature", "less than or equal to 2"),
    ({**CHAT, "n": 0}, "n", "greater than or equal to 1"),
    ({"model": "tiny"}, "messages", "Field required"),
    ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'user'"),
    ({**CHAT, "top_logprobs": 2}, None, "top_logprobs needs logprobs"),
    ({**CHAT, "max_tokens": 252}, "max_tokens", "maximum context length is 256"),
    ({**CHAT, "max_completion_tokens": 252}, "max_completion_tokens", "(5 in the prompt, 252"),
    ({**CHAT, "messages": [{"role": "user", "content": "hi " * 300}]}, "messages",
     "maximum context length is 256"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content", "only text"),
])
async def test_bad_fields_are_400_naming_the_param(bundle, body, param, fragment):
    gen = fake(bundle)
    async with serve(bundle, gen) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert fragment in err["message"]
    assert gen.requests == []  # nothing reached the pipeline


async def test_other_client_errors(bundle):
    async with serve(bundle, fake(bundle)) as c:
        bad_json = await c.post("/v1/chat/completions", content=b"{not json",
                                headers={"content-type": "application/json"})
        model = await c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"})
        token = await c.post("/v1/completions", json={"prompt": [5, 10**7]})
        empty = await c.post("/v1/completions", json={"prompt": ""})
        route = await c.get("/v1/nothing")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    assert model.status_code == 404 and model.json()["error"]["code"] == "model_not_found"
    assert token.status_code == 400 and "outside the vocabulary" in token.text
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt"
    assert route.status_code == 404 and "error" in route.json()


async def test_api_keys(bundle):
    async with serve(bundle, fake(bundle), api_keys={"alice": "sk-alice"}) as c:
        missing = await c.post("/v1/chat/completions", json=CHAT)
        wrong = await c.get("/v1/models", headers={"Authorization": "Bearer sk-bob"})
        right = await c.get("/v1/models", headers={"Authorization": "Bearer sk-alice"})
        health = await c.get("/health")
    for r in (missing, wrong):
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200 and health.status_code == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_queue_full_is_429_with_retry_after(bundle, stream):
    async with serve(bundle, fake(bundle, fail=QueueFull(2.2))) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


async def test_failures_never_leak_a_traceback(bundle):
    async with serve(bundle, fake(bundle, fail=RuntimeError("secret internals"))) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
    async with serve(bundle, fake(bundle, fail=SequenceFailed("RESOURCE_EXHAUSTED",
                                                              "KV cache full"))) as c:
        r = await c.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 503 and "KV cache full" in r.json()["error"]["message"]


async def test_a_failure_after_the_stream_started_is_an_error_event(bundle):
    class FailsMidway(type(fake(bundle))):
        async def generate(self, request):
            async for ev in super().generate(request):
                yield ev
                raise SequenceFailed("RESOURCE_EXHAUSTED", "KV cache full")

    async with serve(bundle, FailsMidway(bundle.tokenizer, REPLY, 1)) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_events(r.text)
    assert "KV cache full" in events[-1]["error"]["message"]


async def test_access_log_line_per_request(bundle, caplog):
    caplog.set_level(logging.INFO, logger="duet.access")
    keys, oks = {"alice": "sk-alice-secret"}, []
    for log_prompts in (False, True):
        async with serve(bundle, fake(bundle), api_keys=keys, log_prompts=log_prompts) as c:
            oks.append(await c.post("/v1/chat/completions", json=CHAT,
                              headers={"Authorization": "Bearer sk-alice-secret"}))
            await c.post("/v1/chat/completions", json=CHAT,
                         headers={"Authorization": "Bearer sk-wrong"})
    lines = [r.getMessage() for r in caplog.records if r.name == "duet.access"]
    assert len(lines) == 4 and not any("sk-" in line for line in lines)
    first, ok = lines[0], oks[0]
    assert f"request_id={ok.json()['id']}" in first and "key=alice" in first
    assert "status=200" in first and "finish=stop" in first
    assert f"prompt_tokens={ok.json()['usage']['prompt_tokens']}" in first
    assert f"output_tokens={ok.json()['usage']['completion_tokens']}" in first
    assert "ttft_s=0." in first and "total_s=" in first and "prompt=" not in first
    assert "status=401" in lines[1] and "key=-" in lines[1]
    assert 'prompt="<｜begin▁of▁sentence｜><｜User｜>Say hello' in lines[2]
