"""The OpenAI SDK against a live master and a live worker (local executor), real gRPC.

One tiny qwen2 checkpoint, one worker process, one master process for the module; the greedy
reference is the engine in-process over all layers.
"""
import asyncio

import httpx
import openai
import pytest

from e2e_harness import e2e_stack, master_stats, wait_kv_free, worker_kv_used_tokens
from e2e_reference import Reference
from master.bundle import ModelBundle

KEY = "sk-e2e-test"
SPLIT = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_qwen2):
    # resume_detached_s: a client that leaves frees its sequences within 1 s (tested)
    with e2e_stack(tmp_path_factory.mktemp("e2e_openai"), tiny_qwen2, SPLIT, max_num_seqs=16,
                   max_waiting=20, resume_detached_s=1.0,
                   env={"DUET_API_KEYS": f"tests:{KEY}"}) as stack:
        stack.bundle = ModelBundle.load(tiny_qwen2)
        stack.tok, stack.name = stack.bundle.tokenizer, tiny_qwen2.name
        stack.ref = Reference(tiny_qwen2, stack.bundle.stop_token_ids)
        yield stack


def sync_client(stack, key=KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=120)


def async_client(stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=KEY, max_retries=0,
                              timeout=120)


def chat_prompt_ids(stack, text: str) -> list[int]:
    template = stack.bundle.chat_template
    return template.encode(template.render([{"role": "user", "content": text}]))


def visible(stack, ids: list[int]) -> list[int]:
    """What the API shows of the reference: the stop token itself is not text."""
    return [i for i in ids if i not in stack.ref.stop_ids]


def test_greedy_completion_equals_the_in_process_engine(stack):
    prompt = stack.tok.encode("The capital of France is")
    ref = stack.ref.greedy(prompt, 12)
    r = sync_client(stack).completions.create(model=stack.name, prompt=prompt, max_tokens=12,
                                              temperature=0, logprobs=0)
    choice = r.choices[0]
    assert choice.logprobs.tokens == [stack.tok.token_text(i) for i in visible(stack, ref)]
    assert choice.text == stack.tok.decode(visible(stack, ref))
    assert choice.finish_reason == ("stop" if ref[-1] in stack.ref.stop_ids else "length")
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_and_not_agree_with_the_engine_and_report_usage(stack):
    messages = [{"role": "user", "content": "Write a haiku about pipelines."}]
    ref = stack.ref.greedy(chat_prompt_ids(stack, messages[0]["content"]), 10)
    client = sync_client(stack)
    full = client.chat.completions.create(model=stack.name, messages=messages, max_tokens=10,
                                          temperature=0)
    assert full.choices[0].message.content == stack.tok.decode(visible(stack, ref))
    assert full.usage.completion_tokens == len(ref)
    chunks = list(client.chat.completions.create(
        model=stack.name, messages=messages, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


async def test_async_streaming_completion_with_a_stop_string(stack):
    prompt = stack.tok.encode("Once upon a time")
    ref = visible(stack, stack.ref.greedy(prompt, 8))
    stop = stack.tok.decode(ref[3:5])  # text the greedy output reaches at its 4th token
    assert stop.strip(), "the reference should produce visible text"
    client = async_client(stack)
    stream = await client.completions.create(model=stack.name, prompt=prompt, max_tokens=8,
                                             temperature=0, stop=[stop], stream=True)
    pieces, reasons = [], []
    async for chunk in stream:
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    full = stack.tok.decode(ref)
    assert "".join(pieces) == full[: full.index(stop)]
    assert reasons[-1] == "stop"


def test_same_seed_same_sample_and_n_choices(stack):
    client = sync_client(stack)
    kw = dict(model=stack.name, prompt="Roll the dice:", max_tokens=8, temperature=1.0)
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    c = client.completions.create(seed=4321, **kw).choices[0].text
    assert a == b and a != c
    r = client.completions.create(n=3, seed=7, **kw)
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2]
    assert len({ch.text for ch in r.choices}) == 3  # seed + i per choice: three samples
    assert r.usage.completion_tokens == 3 * 8


def test_chat_logprobs_rank_the_greedy_token_first(stack):
    r = sync_client(stack).chat.completions.create(
        model=stack.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0], abs=1e-5)  # greedy picks the top one
        assert entry.token == entry.top_logprobs[0].token and entry.logprob < 0


async def test_32_concurrent_streams_complete_correctly_then_kv_is_free(stack):
    texts = ["Alpha", "Bravo charlie", "Delta echo foxtrot", "Golf"]
    prompts = [stack.tok.encode(t) for t in texts]
    refs = [stack.tok.decode(visible(stack, stack.ref.greedy(p, 8))) for p in prompts]
    client = async_client(stack)

    async def one(i: int) -> str:
        stream = await client.completions.create(model=stack.name, prompt=prompts[i % 4],
                                                 max_tokens=8, temperature=0, stream=True)
        return "".join([c.choices[0].text async for c in stream])

    outputs = await asyncio.gather(*(one(i) for i in range(32)))
    assert outputs == [refs[i % 4] for i in range(32)]
    await asyncio.to_thread(wait_kv_free, stack.url, stack.port)


async def test_client_disconnect_frees_kv_on_both_stages(stack):
    body = {"model": stack.name, "prompt": "Tell me everything.", "max_tokens": 2000,
            "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{stack.url}/v1/completions", json=body,
                               headers=headers) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            while not (await lines.__anext__()).startswith("data:"):
                pass
            stats = await asyncio.to_thread(master_stats, stack.url)
            assert stats["head_kv_used_tokens"] > 0
            assert await asyncio.to_thread(worker_kv_used_tokens, stack.port) > 0
        # leaving the block closes the connection mid-stream
    await asyncio.to_thread(wait_kv_free, stack.url, stack.port, 10.0)


def test_errors_have_openai_shape(stack):
    client = sync_client(stack)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=stack.name, prompt="x", max_tokens=4, temperature=-1)
    assert e.value.body["param"] == "temperature" or "temperature" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=stack.name, prompt="x", max_tokens=10**6)
    assert "max_tokens" in str(e.value.body)
    with pytest.raises(openai.AuthenticationError) as e:
        sync_client(stack, key="sk-wrong").completions.create(model=stack.name, prompt="x")
    assert set(e.value.body) >= {"message", "type", "param", "code"}


async def test_full_queue_answers_429_with_retry_after(stack):
    body = {"model": stack.name, "prompt": "Busy busy", "max_tokens": 12, "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=120) as http:
        replies = await asyncio.gather(*(
            http.post(f"{stack.url}/v1/completions", json=body, headers=headers)
            for _ in range(60)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) == {200, 429}, statuses  # 16 running + 20 waiting fit, not 60
    rejected = next(r for r in replies if r.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    await asyncio.to_thread(wait_kv_free, stack.url, stack.port)
