"""Tool calls and the smaller OpenAI/vLLM surface through the official openai SDK, against the
app on a real uvicorn socket. The fake generator plays a model that writes tool-call syntax
(the tiny random checkpoint never would); the prompts it receives show what the template
rendered."""
import json

import httpx
import openai
import pytest

from http_fakes import FakeGenerator, LiveServer, make_model_dir
from master.app import create_app
from master.bundle import ModelBundle
from master.config import MasterConfig
from test_tool_parser import DS_TWO, HERMES_TWO, TWO

TOOLS = [{"type": "function", "function": {
    "name": n, "description": f"{n} of a place",
    "parameters": {"type": "object", "properties": {k: {"type": "string"}}, "required": [k]}}}
    for n, a in TWO for k in a]
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]
FOLLOW_UP = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]


def serve(tmp_path_factory, kind, **config):
    bundle = ModelBundle.load(make_model_dir(tmp_path_factory.mktemp(kind), kind,
                                             max_position_embeddings=4096))
    gen = FakeGenerator(bundle.tokenizer, "", eos_id=bundle.stop_token_ids[0])
    config = MasterConfig(model_dir="unused", served_model_name="tiny", **config)
    return bundle, gen, LiveServer(create_app(config, gen, bundle))


@pytest.fixture(scope="module", params=["deepseek", "qwen"])
def live(request, tmp_path_factory):
    bundle, gen, server = serve(tmp_path_factory, request.param)
    with server:
        yield request.param, bundle, gen, server


@pytest.fixture
def client(live):
    with openai.OpenAI(base_url=live[3].url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def prompt_text(live) -> str:
    _, bundle, gen, _ = live
    return bundle.tokenizer.decode(gen.requests[-1].prompt_token_ids, skip_special_tokens=False)


def calls_of(tool_calls):
    return [(c.function.name, json.loads(c.function.arguments)) for c in tool_calls]


def test_tool_calls_non_streaming_with_definitions_in_the_prompt(live, client):
    kind, _, gen, _ = live
    gen.reply = lambda _r: DS_TWO if kind == "deepseek" else HERMES_TWO
    plain = client.chat.completions.create(model="tiny", messages=ASK)
    out = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS)
    assert out.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the definitions are there
    assert "get_weather" in prompt_text(live) and "of a place" in prompt_text(live)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and calls_of(choice.message.tool_calls) == TWO
    assert choice.message.content.strip() in ("Let me check.", "Sure.")
    assert len({c.id for c in choice.message.tool_calls}) == 2
    # without tools the same text is content, and tool_choice "none" keeps them out
    assert plain.choices[0].message.tool_calls is None
    none = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                          tool_choice="none")
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert none.choices[0].finish_reason == "stop" and none.choices[0].message.tool_calls is None


def test_tool_calls_streaming_as_openai_sends_them(live, client):
    kind, _, gen, _ = live
    gen.reply = lambda _r: DS_TWO if kind == "deepseek" else HERMES_TWO
    stream = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                            stream=True, parallel_tool_calls=True)
    by_index, finish = {}, None
    for chunk in stream:
        for d in chunk.choices[0].delta.tool_calls or []:
            entry = by_index.setdefault(d.index, {"id": d.id, "name": d.function.name,
                                                  "arguments": ""})
            entry["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(e["name"], json.loads(e["arguments"])) for _, e in sorted(by_index.items())] == TWO
    assert all(e["id"].startswith("call_") for e in by_index.values())


def test_multi_turn_renders_calls_and_results(live, client):
    kind, _, gen, _ = live
    gen.reply = lambda _r: "It is 18 C and sunny."
    out = client.chat.completions.create(model="tiny", messages=FOLLOW_UP, tools=TOOLS)
    assert out.choices[0].message.content == "It is 18 C and sunny."
    assert out.choices[0].finish_reason == "stop"
    text = prompt_text(live)
    if kind == "deepseek":  # the checkpoint's own template renders them
        assert ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n'
                '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>') in text
        assert "<｜tool▁output▁begin｜>18 C, sunny<｜tool▁output▁end｜>" in text
    else:  # plain ChatML: written out in the Hermes syntax
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
        assert "<tool_response>\n18 C, sunny\n</tool_response>" in text
        assert "<tools>" in text


def test_malformed_call_is_content_never_an_error(live, client):
    kind, _, gen, _ = live
    bad = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{oops"
           if kind == "deepseek"
           else '<tool_call>\n{"name": "f", "arguments": {oops}}\n</tool_call>')
    gen.reply = lambda _r: bad
    out = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS)
    assert out.choices[0].message.content == bad and out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.tool_calls is None


@pytest.mark.parametrize("kwargs,param", [
    ({"tool_choice": "auto"}, "tool_choice"),  # without tools
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice"),  # two constraints at once
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}],
      "tool_choice": "required"}, "tools"),  # a schema the grammar engine refuses
])
def test_tool_requests_the_server_cannot_honour_are_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=ASK, **kwargs)
    assert e.value.body["param"] == param


def test_forced_calls_constrain_sampling_and_parse_the_json(live, client):
    """tool_choice named / "required": the worker gets the call's JSON schema as a constraint
    (the fake generator plays a model that follows it); the JSON comes back as tool_calls."""
    _, _, gen, _ = live
    gen.reply = lambda _r: '{"city":"Paris"}'
    named = {"type": "function", "function": {"name": "get_weather"}}
    out = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                         tool_choice=named)
    schema = json.loads(gen.requests[-1].params.constraint.text)
    assert schema == TOOLS[0]["function"]["parameters"]
    assert calls_of(out.choices[0].message.tool_calls) == [("get_weather", {"city": "Paris"})]
    assert out.choices[0].message.content is None
    gen.reply = lambda _r: json.dumps([{"name": n, "parameters": a} for n, a in TWO])
    stream = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                            tool_choice="required", stream=True)
    deltas = [d for c in stream for d in c.choices[0].delta.tool_calls or []]
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == TWO
    schema = json.loads(gen.requests[-1].params.constraint.text)
    assert schema["type"] == "array" and schema["minItems"] == 1
    client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                   tool_choice="required", parallel_tool_calls=False)
    assert json.loads(gen.requests[-1].params.constraint.text)["maxItems"] == 1


@pytest.mark.parametrize("field", ["logit_bias", "reasoning_effort", "functions", "ignore_eos"])
def test_unimplemented_fields_are_refused_naming_them(client, field):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=ASK, extra_body={field: {}})
    assert field in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", extra_body={field: {}})


def test_metadata_fields_are_accepted_and_max_completion_tokens_everywhere(live, client):
    _, _, gen, _ = live
    gen.reply = lambda _r: "one two three four five six"
    out = client.chat.completions.create(model="tiny", messages=ASK, user="u", store=False,
                                         metadata={"k": "v"}, service_tier="auto",
                                         max_completion_tokens=2)
    assert out.usage.completion_tokens == 2 and out.choices[0].finish_reason == "length"
    text = client.completions.create(model="tiny", prompt="x", extra_body={
        "max_completion_tokens": 3})
    assert text.usage.completion_tokens == 3


def test_stream_usage_on_every_chunk_when_asked(live, client):
    _, _, gen, _ = live
    gen.reply = lambda _r: "one two three"
    chunks = list(client.chat.completions.create(
        model="tiny", messages=ASK, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    counts = [c.usage.completion_tokens for c in chunks if c.choices and c.choices[0].delta.content]
    assert counts == sorted(counts) and counts[0] >= 1 and len(counts) >= 2
    assert chunks[-1].usage.completion_tokens >= counts[-1] and not chunks[-1].choices
    plain = list(client.chat.completions.create(model="tiny", messages=ASK, stream=True,
                                                stream_options={"include_usage": True}))
    assert [c.usage is not None for c in plain].count(True) == 1


def test_tokenize_and_detokenize_in_vllms_shapes(live):
    kind, bundle, _, server = live
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/tokenize", json={"model": "tiny", "prompt": "Hello world",
                                         "return_token_strs": True}).json()
        assert r["tokens"] == bundle.tokenizer.encode("Hello world")
        assert r["count"] == len(r["tokens"]) and r["max_model_len"] == bundle.max_model_len
        assert "".join(r["token_strs"]).endswith("Hello world")
        assert http.post("/detokenize", json={"tokens": r["tokens"]}).json()["prompt"].endswith(
            "Hello world")
        chat = http.post("/tokenize", json={"messages": ASK}).json()
        with_tools = http.post("/tokenize", json={"messages": ASK, "tools": TOOLS}).json()
        assert with_tools["count"] > chat["count"] + 20
        bad = http.post("/detokenize", json={"tokens": [10**9]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
        assert http.post("/tokenize", json={"prompt": "x", "bogus": 1}).status_code == 400


def test_models_card_has_max_model_len(live, client):
    assert client.models.list().data[0].max_model_len == live[1].max_model_len


def test_cors_off_by_default_and_on_when_configured(tmp_path_factory):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    for origins, allowed in (((), None), (("https://app.example",), "https://app.example")):
        _, _, server = serve(tmp_path_factory, "deepseek", cors_allow_origins=origins)
        with server, httpx.Client(base_url=server.url) as http:
            r = http.options("/v1/chat/completions", headers=preflight)
            assert r.headers.get("access-control-allow-origin") == allowed
