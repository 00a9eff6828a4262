"""What a sequence's output must match (structured outputs): a JSON schema, a regex, a list of
choices or an EBNF grammar, turned into one xgrammar Grammar. Pure text work, no vocabulary:
the master checks a request with it (a 400 naming the problem), the worker compiles the same
grammar against the checkpoint's tokenizer (engine/guide.py).

bench/grammar/results.md says why xgrammar and not llguidance. xgrammar is imported on first
use: it imports transformers, seconds that a server without structured outputs need not pay.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

KINDS = ("json", "regex", "choice", "grammar")
# Compact JSON (no free whitespace between tokens): a model cannot wander off into spaces, so a
# bounded schema ends within a bounded number of tokens.
JSON_SEPARATORS = (",", ":")
_XGR_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class ConstraintError(ValueError):
    """The constraint cannot be compiled; the message names the problem."""


@dataclass(frozen=True)
class Constraint:
    """kind "json": text is a JSON schema; "regex": a regex; "choice": a JSON list of strings;
    "grammar": an EBNF grammar (xgrammar's dialect, GBNF-like, start rule `root`)."""

    kind: str
    text: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConstraintError(f"constraint kind {self.kind!r} is not one of {KINDS}")

    @classmethod
    def json_schema(cls, schema: dict | bool) -> "Constraint":
        """The API for callers (response_format, tool_choice): output is JSON matching schema."""
        return cls("json", json.dumps(schema))

    @classmethod
    def choice(cls, choices: list[str]) -> "Constraint":
        return cls("choice", json.dumps(list(choices)))

    def grammar(self):
        """The xgrammar Grammar; ConstraintError naming the problem if it cannot be built."""
        import xgrammar as xgr

        try:
            if self.kind == "json":
                return xgr.Grammar.from_json_schema(_schema_text(self.text), any_whitespace=False,
                                                    separators=JSON_SEPARATORS)
            if self.kind == "regex":
                return xgr.Grammar.from_regex(self.text)
            if self.kind == "choice":
                return xgr.Grammar.from_ebnf(_choice_ebnf(self.text))
            return xgr.Grammar.from_ebnf(self.text)
        except ConstraintError:
            raise
        except Exception as e:  # xgrammar raises RuntimeError/ValueError with the reason
            reason = error_reason(e)
            raise ConstraintError(f"cannot compile the {self.kind} constraint: {reason}") from None


def error_reason(error: Exception) -> str:
    """xgrammar's message without its "[10:30:06] /project/cpp/x.cc:94: " prefix."""
    lines = str(error).strip().splitlines()
    return _XGR_PREFIX.sub("", lines[-1]) if lines else type(error).__name__


def _schema_text(text: str) -> str:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConstraintError(f"the JSON schema is not JSON: {e}") from None
    if not isinstance(schema, (dict, bool)):
        raise ConstraintError("a JSON schema must be an object or a boolean")
    return text


def _choice_ebnf(text: str) -> str:
    """One alternative per choice, each an EBNF string literal."""
    choices = json.loads(text)
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise ConstraintError("guided_choice must be a non-empty list of strings")
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
