"""Tools through a live master and a live worker (local executor, real gRPC), official openai
SDK. The tiny random checkpoint never writes tool-call syntax by itself; what these tests see
is the prompt side: the definitions, earlier calls and tool results reach the model (its
greedy output equals the in-process engine's on the prompt /tokenize renders), and what the
server cannot honour is a 400."""
from types import SimpleNamespace

import httpx
import openai
import pytest

from e2e_harness import Reference, worker_and_master
from engine.tiny_model import write_tiny_model
from master.bundle import ModelBundle
from test_http_tools import ASK, FOLLOW_UP, TOOLS

SPLIT = 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e_tools")
    model = write_tiny_model("qwen2", tmp / "tiny-qwen2", num_layers=2)
    with worker_and_master(tmp, model, SPLIT) as (url, _):
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
