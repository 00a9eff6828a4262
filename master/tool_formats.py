"""How a model family writes tool calls: the markers, one call's body, and the prompt text for
templates that carry no tool section of their own.

DeepSeek-V3/R1 (markers as the tokenizer has them: U+FF5C bars, U+2581 for spaces):
  <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{ARGS}\\n```
  <｜tool▁call▁end｜>…<｜tool▁calls▁end｜>   (V3.1 writes NAME<｜tool▁sep｜>{ARGS} in a call)
Hermes (Qwen2 family): <tool_call>\\n{"name": NAME, "arguments": {ARGS}}\\n</tool_call>, repeated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

PARSERS = ("auto", "deepseek_v3", "hermes", "none")

DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN, DS_CALL_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
HERMES_BEGIN, HERMES_END = "<tool_call>", "</tool_call>"


def _json_object_text(text: str) -> str | None:
    """`text` re-serialised if it is one JSON object, else None (malformed arguments)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else None


def _deepseek_call(body: str) -> tuple[str, str] | None:
    """A call's text between its markers -> (name, arguments JSON), None if malformed."""
    head, sep, rest = body.partition(DS_SEP)
    if not sep:
        return None
    if head.strip() == "function":  # V3/R1: type, then the name on the first line, then ```json
        name, _, args = rest.partition("\n")
        args = args.strip()
        if args.startswith("```"):
            args = args.removeprefix("```json").removeprefix("```").removesuffix("```")
    else:  # V3.1: the name, then the arguments
        name, args = head, rest
    name, args = name.strip(), _json_object_text(args.strip())
    return (name, args) if name and args is not None else None


def _hermes_call(body: str) -> tuple[str, str] | None:
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    args = call.get("arguments", call.get("parameters", {}))
    if isinstance(args, str):  # some fine-tunes write the arguments as a JSON string
        args = _json_object_text(args)
        return None if args is None else (call["name"], args)
    return (call["name"], json.dumps(args, ensure_ascii=False)) if isinstance(args, dict) else None


def _deepseek_system(tools: list[dict]) -> str:
    # DeepSeek-V3-0324's own tool prompt (its template's tools section), for templates without it
    lines = ["## Tools", "", "### Function", "", "You have the following functions available:", ""]
    for tool in tools:
        fn = tool.get("function", {})
        lines += [f"- `{fn.get('name', '')}`:", "```json", json.dumps(fn, ensure_ascii=False),
                  "```"]
    return "\n".join(lines)


def _hermes_system(tools: list[dict]) -> str:
    # Qwen2.5's template text (Hermes format)
    defs = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{defs}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
            "</tool_call>")


def _deepseek_render(name: str, args: str) -> str:
    return f"{DS_CALL_BEGIN}function{DS_SEP}{name}\n```json\n{args}\n```{DS_CALL_END}"


def _hermes_render(name: str, args: str) -> str:
    return f'{HERMES_BEGIN}\n{{"name": {json.dumps(name)}, "arguments": {args}}}\n{HERMES_END}'


@dataclass(frozen=True)
class ToolFormat:
    """One family's tool-call syntax: what the parser looks for and how to write it back."""

    name: str
    section_begin: str  # "" = calls stand alone (Hermes)
    section_end: str
    call_begin: str
    call_end: str
    parse_call: Callable[[str], tuple[str, str] | None]  # body -> (name, arguments JSON)
    system_text: Callable[[list[dict]], str]  # tool definitions for the system prompt
    render_call: Callable[[str, str], str]  # (name, arguments JSON) -> call text

    def render_calls(self, calls: list[tuple[str, str]]) -> str:
        """Calls of an assistant message as the model writes them."""
        body = "\n".join(self.render_call(n, a) for n, a in calls)
        return f"{self.section_begin}{body}{self.section_end}"


FORMATS = {
    "deepseek_v3": ToolFormat("deepseek_v3", DS_CALLS_BEGIN, DS_CALLS_END, DS_CALL_BEGIN,
                              DS_CALL_END, _deepseek_call, _deepseek_system, _deepseek_render),
    "hermes": ToolFormat("hermes", "", "", HERMES_BEGIN, HERMES_END, _hermes_call,
                         _hermes_system, _hermes_render),
}


def choose_format(setting: str, vocab_has: Callable[[str], bool],
                  template_mentions: Callable[[str], bool]) -> ToolFormat | None:
    """The config's parser, or (auto) the one the checkpoint's tokenizer or template knows."""
    if setting == "none":
        return None
    if setting != "auto":
        return FORMATS[setting]
    if vocab_has(DS_CALLS_BEGIN) or template_mentions(DS_CALLS_BEGIN):
        return FORMATS["deepseek_v3"]
    if vocab_has("<|im_start|>") or template_mentions(HERMES_BEGIN):
        return FORMATS["hermes"]  # ChatML checkpoints (Qwen2) use Hermes-style calls
    return None
