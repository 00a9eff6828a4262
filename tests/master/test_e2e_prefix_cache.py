"""Automatic prefix caching through live processes: a master and a worker (local executor),
real gRPC, the openai SDK. The greedy reference is the engine in-process, without caching."""
import re

import httpx
import openai
import pytest

from e2e_harness import e2e_stack, master_stats, wait_kv_free, wait_ready
from e2e_reference import Reference
from master.bundle import ModelBundle

SPLIT = 2
SYSTEM = ("You are a careful assistant. Answer in one short sentence, cite no sources, and "
          "say so when you do not know. ") * 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_qwen2):
    with e2e_stack(tmp_path_factory.mktemp("e2e_prefix"), tiny_qwen2, SPLIT,
                   reconnect_max_s=0.2) as stack:
        bundle = ModelBundle.load(tiny_qwen2)
        stack.tok, stack.ref = bundle.tokenizer, Reference(tiny_qwen2, bundle.stop_token_ids)
        yield stack


def complete(stack, prompt: list[int]) -> list[int]:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=120)
    r = client.completions.create(model=stack.model.name, prompt=prompt, max_tokens=10,
                                  temperature=0, logprobs=0)
    return r.choices[0].logprobs.tokens


def expected(stack, prompt: list[int]) -> list[str]:
    ids = [i for i in stack.ref.greedy(prompt, 10) if i not in stack.ref.stop_ids]
    return [stack.tok.token_text(i) for i in ids]


def counters(stack) -> tuple[float, float]:
    text = httpx.get(f"{stack.url}/metrics").text
    def total(name):
        return float(re.search(rf"^{name}_total\{{[^}}]*\}} (\S+)$", text, re.M).group(1))
    return total("vllm:prefix_cache_queries"), total("vllm:prefix_cache_hits")


def test_shared_prefixes_give_the_uncached_greedy_tokens_and_free_their_blocks(stack):
    prompts = [stack.tok.encode(SYSTEM + q) for q in ("What is two plus two?",
                                                      "Name a colour.", "What is two plus two?")]
    assert len(prompts[0]) > 48
    queries0, hits0 = counters(stack)
    for prompt in prompts:
        assert complete(stack, prompt) == expected(stack, prompt)
    queries, hits = counters(stack)
    assert queries - queries0 == sum(len(p) for p in prompts)
    shared = len(stack.tok.encode(SYSTEM)) // 16 * 16
    assert hits - hits0 >= 2 * shared - 32  # the later two reuse the system prompt's blocks
    wait_kv_free(stack.url, stack.port)  # kept blocks are idle, not held
    assert master_stats(stack.url)["head_kv_cached_tokens"] >= shared


def test_a_restarted_worker_starts_from_an_empty_cache(stack):
    prompt = stack.tok.encode(SYSTEM + "Where is Paris?")
    assert complete(stack, prompt) == expected(stack, prompt)
    stack.worker.stop()
    stack.restart_worker("worker2")
    wait_ready(stack.url)
    assert master_stats(stack.url)["prefix_cached_blocks"] == 0
    _, hits0 = counters(stack)
    assert complete(stack, prompt) == expected(stack, prompt)  # the master claims no block
    _, hits1 = counters(stack)
    assert complete(stack, prompt) == expected(stack, prompt)
    _, hits2 = counters(stack)
    assert hits1 == hits0 and hits2 > hits1
    wait_kv_free(stack.url, stack.port)
