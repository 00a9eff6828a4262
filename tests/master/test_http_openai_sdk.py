"""The official openai SDK against the app on a real uvicorn socket (fake generator behind it)."""
import asyncio
import logging
import time

import httpx
import openai
import pytest

from http_fakes import FakeGenerator, LiveServer, make_model_dir
from master.app import create_app
from master.bundle import ModelBundle
from master.config import MasterConfig
from master.generation import PipelineUnavailable, QueueFull

KEY = "sk-duet-test"
REPLY = "The capital of France is Paris. 🇫🇷"
MESSAGES = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> ModelBundle:
    return ModelBundle.load(make_model_dir(tmp_path_factory.mktemp("sdk"), "deepseek"))


@pytest.fixture(scope="module")
def gen(bundle) -> FakeGenerator:
    return FakeGenerator(bundle.tokenizer, REPLY, eos_id=1)


@pytest.fixture(scope="module")
def server(bundle, gen):
    # resume_detached_s = 0: a client that leaves frees its sequences at once (tested below)
    config = MasterConfig(model_dir="unused", served_model_name="tiny", api_keys={"ci": KEY},
                          resume_detached_s=0)
    with LiveServer(create_app(config, gen, bundle)) as live:
        yield live


@pytest.fixture(autouse=True)
def reset(gen):
    gen.fail, gen.delay_s, gen.reply = None, 0.0, (lambda _req: REPLY)
    yield


@pytest.fixture
def client(server) -> openai.OpenAI:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server):
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY,
                                  max_retries=0) as c:
        yield c


def test_sync_chat_and_completions_streaming_and_not(client, gen):
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES)
    assert chat.choices[0].message.content == REPLY
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.completion_tokens == len(gen.reply_ids(gen.requests[-1])) + 1
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == REPLY
    text = client.completions.create(model="tiny", prompt="France:", max_tokens=5)
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 5
    assert REPLY.startswith(text.choices[0].text)
    pieces = client.completions.create(model="tiny", prompt="France:", max_tokens=64,
                                       stream=True, stop=["Paris"])
    assert "".join(c.choices[0].text for c in pieces) == "The capital of France is "
    assert [m.id for m in client.models.list()] == ["tiny"]


async def test_async_n_logprobs_usage_and_stop(aclient, gen):
    gen.reply = lambda req: f"choice with seed {req.params.seed}."
    chat = await aclient.chat.completions.create(
        model="tiny", messages=MESSAGES, n=2, seed=5, logprobs=True, top_logprobs=3,
        stop=" seed")
    assert [c.message.content for c in chat.choices] == ["choice with"] * 2
    for c in chat.choices:
        entries = c.logprobs.content
        assert "".join(e.token for e in entries).startswith("choice with seed")
        assert all(len(e.top_logprobs) == 3 for e in entries)
    assert [r.params.seed for r in gen.requests[-2:]] == [5, 6]
    stream = await aclient.chat.completions.create(
        model="tiny", messages=MESSAGES, n=2, seed=5, stream=True,
        stream_options={"include_usage": True})
    texts, usage = ["", ""], None
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
        usage = chunk.usage or usage
    assert texts == ["choice with seed 5.", "choice with seed 6."]
    assert usage.completion_tokens == sum(len(gen.reply_ids(r)) + 1 for r in gen.requests[-2:])
    comp = await aclient.completions.create(model="tiny", prompt=[[1000, 1001]], logprobs=2,
                                            max_tokens=4)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.top_logprobs[0]) == 2 and lp.text_offset[0] == 0


def test_errors_arrive_as_the_sdks_exceptions(server, client, gen):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=9)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    assert e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10_000)
    assert e.value.code == "context_length_exceeded"
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    gen.fail = QueueFull(4)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
    assert e.value.response.headers["retry-after"] == "4"
    gen.fail = PipelineUnavailable("worker at 10.0.0.2:50051 is unreachable")
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model="tiny", prompt="x")
    assert e.value.status_code == 503 and "unreachable" in e.value.message


async def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_frees_the_sequences(server, gen, stream, caplog):
    caplog.set_level(logging.INFO, logger="duet.access")
    gen.delay_s, gen.reply = 0.05, (lambda _req: "word " * 200)
    body = {"model": "tiny", "messages": MESSAGES, "n": 2, "stream": stream}
    before = len(gen.closed)
    async with httpx.AsyncClient(base_url=server.url,
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        if stream:
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = r.aiter_lines()
                while "word" not in await anext(lines):
                    pass
                assert len(gen.open) == 2
        else:
            task = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            await wait_until(lambda: len(gen.open) == 2)
            task.cancel()
    await wait_until(lambda: not gen.open)
    assert len(gen.closed) == before + 2
    # Freed at once: far fewer than the 400 tokens of the reply were generated.
    assert all(gen.yielded.get(r.request_id, 0) < 50 for r in gen.requests[-2:])
    await wait_until(lambda: any("finish=disconnect" in r.getMessage() for r in caplog.records))
    (line,) = [r.getMessage() for r in caplog.records if "finish=disconnect" in r.getMessage()]
    assert "key=ci" in line and ("status=200" in line) == stream
