"""Random JSON schemas of bounded output size, for structured-output tests: every value is
bounded (integer ranges, short strings, enums, booleans, short arrays, one nested level), so
compact JSON output fits in max_tokens and the grammar must end it."""
from __future__ import annotations

import random

MAX_TOKENS = 400  # worst case of the generator below, with room (a char may take 3 byte tokens)


def leaf(rng: random.Random, strings: bool = True) -> dict:
    kinds = ["integer", "enum", "boolean", "number_enum"] + (["string"] if strings else [])
    kind = rng.choice(kinds)
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "ok", "fail", "maybe"], rng.randint(1, 4))}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "number_enum":
        return {"enum": rng.sample([0, 1, 2.5, -3, 10], 2)}
    return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 5)}


def value(rng: random.Random, depth: int) -> dict:
    roll = rng.random()
    if depth < 1 and roll < 0.2:
        return obj(rng, depth + 1, max_props=3)
    if roll < 0.35:
        return {"type": "array", "items": leaf(rng, strings=False), "maxItems": rng.randint(1, 3)}
    return leaf(rng)


def obj(rng: random.Random, depth: int = 0, max_props: int = 4) -> dict:
    names = rng.sample(["id", "name", "color", "size", "flag", "tags", "score", "kind"],
                       rng.randint(1, max_props))
    props = {n: value(rng, depth) for n in names}
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


def random_schema(seed: int) -> dict:
    return obj(random.Random(seed))
