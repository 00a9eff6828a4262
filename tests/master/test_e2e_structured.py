"""Structured outputs through the OpenAI SDK against a live master and worker (local executor;
one test on the triton executor): whatever the random-weight model prefers, the output parses
and validates, because the worker masks every token with the request's grammar."""
import asyncio
import json
import re

import jsonschema
import openai
import pytest

from e2e_harness import e2e_stack, wait_kv_free
from structured_schemas import MAX_TOKENS, random_schema
from worker.triton_repo import TritonInstall, TritonNotInstalled

SPLIT = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_qwen2):
    with e2e_stack(tmp_path_factory.mktemp("e2e_structured"), tiny_qwen2, SPLIT,
                   max_num_seqs=16) as stack:
        stack.name = tiny_qwen2.name
        yield stack


def client(stack, cls=openai.OpenAI):
    return cls(base_url=f"{stack.url}/v1", api_key="none", max_retries=0, timeout=300)


async def _json_schema_outputs(stack, schemas: list[dict]) -> list:
    async with client(stack, openai.AsyncOpenAI) as c:
        return await asyncio.gather(*[
            c.chat.completions.create(
                model=stack.name, max_tokens=MAX_TOKENS, temperature=1.0, seed=i,
                messages=[{"role": "user", "content": "Describe a thing as JSON."}],
                response_format={"type": "json_schema",
                                 "json_schema": {"name": f"s{i}", "schema": schema}})
            for i, schema in enumerate(schemas)])


def _assert_valid(responses, schemas):
    for i, (r, schema) in enumerate(zip(responses, schemas)):
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (i, schema, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_fifty_random_json_schemas_always_parse_and_validate(stack):
    schemas = [random_schema(seed) for seed in range(50)]
    _assert_valid(asyncio.run(_json_schema_outputs(stack, schemas)), schemas)
    wait_kv_free(stack.url, stack.port)


def test_json_object_streams_one_json_object(stack):
    stream = client(stack).chat.completions.create(
        model=stack.name, max_tokens=60, temperature=1.0, seed=3, stream=True,
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    assert text.startswith("{")
    if reason == "stop":  # an open object may grow past any max_tokens; a closed one parses
        assert isinstance(json.loads(text), dict)
    else:
        assert reason == "length"


def test_guided_choice_and_regex_on_completions_and_chat(stack):
    c = client(stack)
    choices = ["sunny", "rain", "snow storm"]
    for seed in range(4):
        r = c.completions.create(model=stack.name, prompt="Weather:", max_tokens=10,
                                 temperature=1.0, seed=seed, extra_body={"guided_choice": choices})
        assert r.choices[0].text in choices and r.choices[0].finish_reason == "stop"
        r = c.chat.completions.create(
            model=stack.name, max_tokens=12, temperature=1.0, seed=seed,
            messages=[{"role": "user", "content": "A code"}],
            extra_body={"guided_regex": r"[A-Z]{2}-[0-9]{3}"})
        assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", r.choices[0].message.content)


@pytest.mark.parametrize("body, param, problem", [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}},
     "response_format", "minimum greater than maximum"),
    ({"guided_json": {"type": "strin"}}, "guided_json", 'Unsupported type "strin"'),
    ({"guided_regex": "([a-z"}, "guided_regex", "Unclosed"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "only one of"),
])
def test_a_constraint_that_cannot_compile_is_a_400_naming_it(stack, body, param, problem):
    with pytest.raises(openai.BadRequestError) as info:
        client(stack).chat.completions.create(
            model=stack.name, max_tokens=5, messages=[{"role": "user", "content": "x"}],
            extra_body=body)
    error = info.value.body
    assert error["param"] == param and problem in error["message"], error


@pytest.mark.triton
def test_json_schemas_on_the_triton_executor(tmp_path, tiny_qwen2):
    try:
        TritonInstall.find()
    except TritonNotInstalled as e:
        pytest.skip(f"tritonserver is not installed: {e}")
    with e2e_stack(tmp_path, tiny_qwen2, SPLIT, worker=dict(executor="triton"),
                   max_num_seqs=16) as s:
        s.name = tiny_qwen2.name
        schemas = [random_schema(seed) for seed in range(100, 106)]
        _assert_valid(asyncio.run(_json_schema_outputs(s, schemas)), schemas)
