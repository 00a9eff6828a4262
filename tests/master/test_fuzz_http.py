"""Fuzz the HTTP API from its own /openapi.json (hypothesis-jsonschema): no body may get a 5xx
or an error event with a server error, and the master must stay ready.

Every numeric field of a working body is sent at every edge of what the wire and the model
carry, one field at a time (all of them, so no edge depends on the draw); then random bodies:
schema-valid ones, working ones with one or two fields at an edge, and the schema's field
names with arbitrary JSON values. A live master and worker (local executor) over a tiny
checkpoint; fixed seed, bounded examples. max_tokens and n are clamped so that a valid body
generates a few tokens only.
"""
import json
import re

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from e2e_harness import live_pipeline

SPLIT = 2
# Random bodies per endpoint. At 100 the random draw alone missed a wire-range bug (top_k
# 2**31); test_every_numeric_field_at_every_edge now finds it whatever this count is.
EXAMPLES_PER_ENDPOINT = 50
MINIMAL = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
           "/v1/completions": {"prompt": "hi"}}
ENDPOINTS = tuple(MINIMAL)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)
# Values at the edges of what the wire and the model carry (int32, uint64, float32, vocab).
SCALAR_EDGES = [0, -1, 2**31 - 1, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 10**6, 1e39, -1e39,
                float("nan"), float("inf"), None]
LIST_EDGES = [[2**31], [-1], [10**6], None]  # for fields that hold lists of numbers (ids)
EDGES = st.sampled_from(SCALAR_EDGES + LIST_EDGES[:-1])


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_qwen2):
    tmp = tmp_path_factory.mktemp("fuzz_http")
    with live_pipeline(tmp, tiny_qwen2, SPLIT, max_output_tokens=64) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, client.get("/openapi.json").json()


def request_schema(openapi: dict, path: str) -> dict:
    content = openapi["paths"][path]["post"]["requestBody"]["content"]
    return {**content["application/json"]["schema"], "components": openapi["components"]}


def request_fields(openapi: dict, path: str, kind: str = "integer|number"
                   ) -> tuple[list[str], list[str]]:
    """(every field of the endpoint's body, those whose schema names a type in `kind`)."""
    name = request_schema(openapi, path)["$ref"].rsplit("/", 1)[1]
    properties = openapi["components"]["schemas"][name]["properties"]
    fields = sorted(properties)
    typed = [f for f in fields if re.search(rf'"({kind})"', json.dumps(properties[f]))]
    return fields, typed


def body_strategy(openapi: dict, path: str) -> st.SearchStrategy:
    schema = request_schema(openapi, path)
    fields, numeric = request_fields(openapi, path)
    junk = st.dictionaries(st.sampled_from(fields), JSON_VALUES, max_size=6)
    edged = st.dictionaries(st.sampled_from(numeric), EDGES, min_size=1, max_size=2).map(
        lambda extra: {**MINIMAL[path], **extra})  # a body that works but for one or two fields
    return st.one_of([edged] * 4 + [from_schema(schema), junk, JSON_VALUES])


def clamp(body):
    """A few tokens per valid body, so the examples stay fast (edge values stay as drawn)."""
    if isinstance(body, dict):
        for key, most, edge in (("max_tokens", 3, 2**31), ("max_completion_tokens", 3, 2**31),
                                ("n", 2, 129)):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and most < value < edge:
                body[key] = most
        body.setdefault("max_tokens", 3)
    return body


def check(client: httpx.Client, path: str, body) -> None:
    try:
        payload = json.dumps(clamp(body), allow_nan=True)
    except (ValueError, RecursionError):
        return
    headers = {"content-type": "application/json"}
    with client.stream("POST", path, content=payload, headers=headers) as r:
        text = r.read().decode(errors="replace")
    assert r.status_code < 500, (path, payload[:500], r.status_code, text[:500])
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for line in text.splitlines():
            if line.startswith("data: {") and '"error"' in line:
                error = json.loads(line[6:])["error"]
                assert error["type"] != "server_error", (path, payload[:500], line)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_every_numeric_field_at_every_edge(served, path):
    client, openapi = served
    _, numeric = request_fields(openapi, path)
    assert {"top_k", "seed", "max_tokens", "temperature"} <= set(numeric)
    _, lists = request_fields(openapi, path, kind="array")
    for field in numeric:  # one at a time, so a failure names the body that broke the server
        for edge in LIST_EDGES if field in lists else SCALAR_EDGES:
            check(client, path, {**MINIMAL[path], field: edge})
    assert client.get("/ready").status_code == 200


@pytest.mark.parametrize("path", ENDPOINTS)
def test_no_request_body_gets_a_server_error(served, path):
    client, openapi = served
    bodies = body_strategy(openapi, path)

    @settings(max_examples=EXAMPLES_PER_ENDPOINT, derandomize=True, deadline=None,
              database=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def fuzz(body):
        check(client, path, body)

    fuzz()
    assert client.get("/ready").status_code == 200
