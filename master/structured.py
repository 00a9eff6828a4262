"""Structured outputs on the HTTP side: `response_format` (OpenAI) and vLLM's `guided_*`
fields -> one engine Constraint, checked here so that a schema the grammar engine cannot
compile is a synchronous 400 naming the problem (the worker compiles it again, with the vocab).
"""
from __future__ import annotations

import json

from engine.constraint import Constraint, ConstraintError
from master.errors import APIError
from master.openai_requests import ResponseFormat

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def constraint_of(req) -> Constraint | None:
    """The request's constraint (None: free text), checked; APIError 400 naming the field."""
    given = [name for name in ("response_format", *GUIDED_FIELDS)
             if _is_set(name, getattr(req, name, None))]
    if len(given) > 1:
        raise APIError(400, f"only one of {', '.join(given)} may be given", param=given[1])
    if not given:
        return None
    name = given[0]
    try:
        constraint = _build(name, getattr(req, name))
        constraint.grammar()
    except ConstraintError as e:
        raise APIError(400, f"{name}: {e}", param=name) from None
    return constraint


def _is_set(name: str, value) -> bool:
    if name == "response_format":
        return value is not None and value.type != "text"
    return value is not None


def _build(name: str, value) -> Constraint:
    if name == "response_format":
        return _from_response_format(value)
    if name == "guided_json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"the JSON schema is not JSON: {e}") from None
        return Constraint.json_schema(value)
    if name == "guided_choice":
        return Constraint.choice(value)
    return Constraint("regex" if name == "guided_regex" else "grammar", value)


def _from_response_format(fmt: ResponseFormat) -> Constraint:
    if fmt.type == "json_object":
        return Constraint.json_schema({"type": "object"})
    if fmt.json_schema is None:
        raise ConstraintError("type json_schema needs a json_schema object")
    schema = fmt.json_schema.get("schema", {})  # OpenAI: a missing schema allows any JSON
    if not isinstance(schema, (dict, bool)):
        raise ConstraintError("json_schema.schema must be an object")
    return Constraint.json_schema(schema)
