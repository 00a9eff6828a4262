"""A chat request's tools: checked, put into the prompt, and the parser that reads the calls back.

`tool_choice`: "none" = the tools stay out of the prompt and nothing is parsed; "auto" (the
default with tools) = the model's own syntax is parsed; "required" or a named function = the
output must be a call: `forced_constraint` makes `ToolPlan.forced_schema` the JSON schema the
worker's sampler enforces (the structured-output path, engine/constraint.py), and the output is
read back as that JSON (`ForcedToolParser`), as vLLM does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.constraint import Constraint, ConstraintError
from master.errors import APIError
from master.tool_formats import ToolFormat
from master.tool_parser import ForcedToolParser, ToolCallParser

_OUTPUT_WRAP = {"deepseek_v3": ("<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"),
                "hermes": ("<tool_response>\n", "\n</tool_response>")}


def _function(tool: Any, index: int) -> dict:
    """The `function` of one tools[] entry; 400 naming the entry when it is not one."""
    param = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise APIError(400, f"{param}: only tools of type 'function' are supported", param=param)
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise APIError(400, f"{param}.function.name is required", param=f"{param}.function.name")
    if not isinstance(fn.get("parameters", {}), dict):
        raise APIError(400, f"{param}.function.parameters must be a JSON schema object",
                       param=f"{param}.function.parameters")
    return fn


@dataclass(frozen=True)
class ToolPlan:
    """What one request does with its tools."""

    tools: list[dict]  # as the client sent them (type + function)
    functions: dict[str, dict]  # name -> function definition
    mode: str  # "auto" | "required" | "named"
    function: str | None  # the named function
    parallel: bool
    fmt: ToolFormat | None  # the model's call syntax (None: no parser for this checkpoint)

    def parser(self):
        """A fresh parser for one choice; None when the output is not read for calls."""
        if self.mode != "auto":
            return ForcedToolParser(self.function)
        return ToolCallParser(self.fmt, self.parallel) if self.fmt is not None else None

    def forced_schema(self) -> dict | None:
        """The JSON schema the output must follow, or None ("auto")."""
        if self.mode == "named":
            return self.functions[self.function].get("parameters") or {"type": "object"}
        if self.mode == "auto":
            return None
        items = [{"type": "object", "required": ["name", "parameters"],
                  "properties": {"name": {"type": "string", "enum": [name]},
                                 "parameters": fn.get("parameters") or {"type": "object"}}}
                 for name, fn in self.functions.items()]
        schema = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
        return schema if self.parallel else {**schema, "maxItems": 1}


def tool_plan(tools: list | None, tool_choice: Any, parallel: bool | None,
              fmt: ToolFormat | None) -> ToolPlan | None:
    """The request's plan, None when there are no tools or tool_choice is "none"."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return None
    functions = {}
    for i, tool in enumerate(tools):
        fn = _function(tool, i)
        functions[fn["name"]] = fn
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return ToolPlan(tools, functions, choice, None, parallel is not False, fmt)
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type", "function") != "function" or not name:
        raise APIError(400, 'tool_choice must be "none", "auto", "required" or '
                       '{"type": "function", "function": {"name": …}}', param="tool_choice")
    if name not in functions:
        raise APIError(400, f"tool_choice names {name!r}, which is not in tools",
                       param="tool_choice")
    return ToolPlan(tools, functions, "named", name, parallel is not False, fmt)


def _arguments_text(call: dict) -> dict:
    """A tool call of an assistant message with its arguments as a JSON string (templates
    concatenate them)."""
    fn = dict(call.get("function") or {})
    if not isinstance(fn.get("arguments", ""), str):
        fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
    return {**call, "type": call.get("type", "function"), "function": fn}


def prompt_messages(messages: list[dict], plan: ToolPlan | None, fmt: ToolFormat | None,
                    template_uses: set[str]) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) for the template: what it cannot render itself is written in the
    model's own syntax (tool definitions into the system message, calls and results into
    the messages)."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [_arguments_text(c) for c in m["tool_calls"]]}
        if fmt is not None and "tool_calls" not in template_uses:
            m = _written_out(m, fmt)
        out.append(m)
    if plan is None:
        return out, None
    if "tools" in template_uses or fmt is None:
        return out, plan.tools
    text = fmt.system_text(plan.tools)
    if out and out[0]["role"] == "system":
        return [{**out[0], "content": f"{out[0].get('content') or ''}\n\n{text}"}, *out[1:]], None
    return [{"role": "system", "content": text}, *out], None


def _written_out(m: dict, fmt: ToolFormat) -> dict:
    """A tool call or tool result as plain text, for templates with no tool sections."""
    if m["role"] == "assistant" and m.get("tool_calls"):
        calls = [(c["function"].get("name", ""), c["function"].get("arguments") or "{}")
                 for c in m["tool_calls"]]
        rest = {k: v for k, v in m.items() if k != "tool_calls"}
        return {**rest, "content": (m.get("content") or "") + fmt.render_calls(calls)}
    if m["role"] == "tool":
        begin, end = _OUTPUT_WRAP[fmt.name]
        return {"role": "user", "content": f"{begin}{m.get('content') or ''}{end}"}
    return m



def forced_constraint(plan: ToolPlan | None, other: Constraint | None) -> Constraint | None:
    """The request's sampling constraint: a forced call's JSON schema ("required" or a named
    function), else `other` (response_format / guided_*); both at once is a 400."""
    schema = plan.forced_schema() if plan is not None else None
    if schema is None:
        return other
    if other is not None:
        raise APIError(400, 'tool_choice "required" or a named function cannot be combined '
                       "with response_format or guided_*", param="tool_choice")
    constraint = Constraint.json_schema(schema)
    try:
        constraint.grammar()
    except ConstraintError as e:
        raise APIError(400, f"tools: the parameters schema cannot be enforced: {e}",
                       param="tools") from None
    return constraint
