"""Tools through a live master and a live worker (local executor, real gRPC), official openai
SDK. The tiny random checkpoint never writes tool-call syntax by itself: the prompt side is
checked by its greedy output (equal to the in-process engine's on the prompt /tokenize
renders, definitions, earlier calls and tool results included), and the calls by forcing them
(tool_choice named or "required": the worker's sampler is constrained to the call's JSON)."""
import json
from types import SimpleNamespace

import httpx
import jsonschema
import openai
import pytest

from e2e_harness import live_pipeline
from e2e_reference import Reference
from engine.tiny_model import write_tiny_model
from master.bundle import ModelBundle
from test_http_tools import ASK, FOLLOW_UP, TOOLS

# Bounded arguments (enums), so that a random model's constrained output always ends.
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]},
                                         "days": {"type": "integer", "minimum": 1,
                                                  "maximum": 9}},
        "required": ["city"], "additionalProperties": False}
TZ = {"type": "object", "properties": {"tz": {"enum": ["CET", "UTC"]}}, "required": ["tz"],
      "additionalProperties": False}
BOUNDED = [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}},
           {"type": "function", "function": {"name": "get_time", "parameters": TZ}}]
SCHEMAS = {"get_weather": CITY, "get_time": TZ}

SPLIT = 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e_tools")
    model = write_tiny_model("qwen2", tmp / "tiny-qwen2", num_layers=2)
    with live_pipeline(tmp, model, SPLIT) as url:
        bundle = ModelBundle.load(model)
        yield SimpleNamespace(url=url, name=model.name, tok=bundle.tokenizer,
                              ref=Reference(model, bundle.stop_token_ids))


@pytest.fixture
def client(stack):
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0,
                       timeout=120) as c:
        yield c


def rendered(stack, messages, tools=None) -> list[int]:
    body = {"messages": messages, **({"tools": tools} if tools else {})}
    return httpx.post(f"{stack.url}/tokenize", json=body, timeout=30).json()["tokens"]


@pytest.mark.parametrize("messages", [ASK, FOLLOW_UP], ids=["ask", "tool-result"])
def test_the_model_sees_the_tools_and_the_earlier_calls(stack, client, messages):
    ids = rendered(stack, messages, TOOLS)
    assert len(ids) > len(rendered(stack, messages)) + 20  # definitions are in the prompt
    out = client.chat.completions.create(model=stack.name, messages=messages, tools=TOOLS,
                                         max_tokens=6, temperature=0)
    assert out.usage.prompt_tokens == len(ids)
    ref = [t for t in stack.ref.greedy(ids, 6) if t not in stack.ref.stop_ids]
    assert out.choices[0].message.content == stack.tok.decode(ref)  # the model saw `ids`
    streamed = client.chat.completions.create(model=stack.name, messages=messages, tools=TOOLS,
                                              max_tokens=6, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == (out.choices[0].message.content or "")
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_unimplemented_fields_are_refused_and_metadata_accepted(stack, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=stack.name, messages=ASK, max_tokens=2,
                                       logit_bias={"1": 5})
    assert "logit_bias" in e.value.body["message"]
    ok = client.chat.completions.create(model=stack.name, messages=ASK, max_tokens=2,
                                        user="u", store=False, metadata={"k": "v"},
                                        service_tier="auto")
    assert ok.usage.completion_tokens >= 1


def assert_valid_calls(calls, names=tuple(SCHEMAS)):
    assert calls and len({c.id for c in calls}) == len(calls)
    for call in calls:
        assert call.type == "function" and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forced_calls_are_always_produced_and_valid(stack, client, seed):
    named = {"type": "function", "function": {"name": "get_time"}}
    out = client.chat.completions.create(model=stack.name, messages=ASK, tools=BOUNDED,
                                         tool_choice=named, max_tokens=60, seed=seed)
    assert out.choices[0].finish_reason == "tool_calls", out.choices[0].message
    assert_valid_calls(out.choices[0].message.tool_calls, ("get_time",))
    out = client.chat.completions.create(model=stack.name, messages=FOLLOW_UP, tools=BOUNDED,
                                         tool_choice="required", max_tokens=200, seed=seed,
                                         parallel_tool_calls=seed != 3)
    calls = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls", out.choices[0].message
    assert_valid_calls(calls)
    assert len(calls) == 1 or seed != 3


def test_forced_calls_stream_as_tool_call_deltas(stack, client):
    stream = client.chat.completions.create(model=stack.name, messages=ASK, tools=BOUNDED,
                                            tool_choice="required", max_tokens=200, seed=7,
                                            stream=True)
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert_valid_calls([SimpleNamespace(id=d.id, type=d.type, function=d.function)
                        for d in deltas])
