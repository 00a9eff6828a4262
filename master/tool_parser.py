"""Streamed model text -> (content, tool calls), for the model's own syntax (`ToolCallParser`)
or for output forced into JSON by `tool_choice` (`ForcedToolParser`).

A call is sent whole (id, name, arguments) once its end marker arrives, so a call that turns
out malformed (invalid JSON, unterminated at the end) can still become plain content.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from master.reasoning import partial_tag_len
from master.tool_formats import ToolFormat


@dataclass
class ToolCallDelta:
    """One entry of `delta.tool_calls` (or, whole, of `message.tool_calls`)."""

    index: int  # position among this choice's calls
    id: str | None = None  # set on a call's first delta
    name: str | None = None
    arguments: str = ""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    """Finds the format's calls in streamed text; a marker split across deltas is held back."""

    def __init__(self, fmt: ToolFormat, parallel: bool = True):
        self._fmt, self._parallel = fmt, parallel
        self._state = "text"  # "text" | "section" (between DeepSeek calls) | "call"
        self._buf = ""
        self._calls = 0
        # In a DeepSeek section: whether a call in it parsed, whether its begin marker has
        # gone out as content (a malformed first call) — a section of only malformed calls
        # comes out as the model wrote it, markers included.
        self._section_good = self._section_shown = self._sectioned = False

    @property
    def called(self) -> bool:
        return self._calls > 0

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """New text -> (new content, calls completed by it)."""
        self._buf += text
        content, calls = "", []
        while self._buf:
            step = {"text": self._in_text, "section": self._in_section, "call": self._in_call}
            out, done = step[self._state]()
            content += out
            if isinstance(done, ToolCallDelta):
                calls.append(done)
            elif done:
                break  # waiting for more text
        return content, calls

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """End of output: an unterminated call (or a held-back tail) is plain content."""
        held, self._buf = self._buf, ""
        state, self._state = self._state, "text"
        if state == "call":
            return self._unparsed(self._fmt.call_begin + held), []
        if state == "section" and not self._section_good:
            return self._section_text() + held, []
        if state == "section":
            return (held if held.strip() else ""), []
        return held, []

    def _unparsed(self, call_text: str) -> str:
        """A malformed call as content, after its section's begin marker if nothing parsed."""
        if self._sectioned and not self._section_good:
            return self._section_text() + call_text
        return call_text

    def _section_text(self) -> str:
        """The section's begin marker, the first time a section without calls shows it."""
        shown, self._section_shown = self._section_shown, True
        return "" if shown else self._fmt.section_begin

    def _in_text(self):
        fmt = self._fmt
        markers = [m for m in (fmt.section_begin, fmt.call_begin) if m]
        found = [(self._buf.find(m), m) for m in markers if m in self._buf]
        if not found:
            keep = max(partial_tag_len(self._buf, m) for m in markers)
            out, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
            return out, True
        at, marker = min(found)
        out, self._buf = self._buf[:at], self._buf[at + len(marker):]
        self._state = "section" if marker == fmt.section_begin else "call"
        self._section_good = self._section_shown = False
        self._sectioned = marker == fmt.section_begin
        return out, False

    def _in_section(self):
        fmt = self._fmt
        stripped = self._buf.lstrip()
        if stripped.startswith(fmt.call_begin):
            self._buf, self._state = stripped[len(fmt.call_begin):], "call"
        elif stripped.startswith(fmt.section_end):
            self._buf, self._state = stripped[len(fmt.section_end):], "text"
            if not self._section_good:
                return self._section_text() + fmt.section_end, False
        elif fmt.call_begin.startswith(stripped) or fmt.section_end.startswith(stripped):
            return "", True  # a marker may still be coming
        else:  # not a call: what follows is text again
            self._state = "text"
        return "", False

    def _in_call(self):
        fmt = self._fmt
        end = self._buf.find(fmt.call_end)
        if end < 0:
            return "", True
        body, self._buf = self._buf[:end], self._buf[end + len(fmt.call_end):]
        self._state = "section" if fmt.section_begin else "text"
        parsed = fmt.parse_call(body)
        if parsed is None:  # malformed: the call's text as the model wrote it
            return self._unparsed(fmt.call_begin + body + fmt.call_end), False
        if self._calls and not self._parallel:
            return "", False  # parallel_tool_calls false: only the first call counts
        self._calls += 1
        self._section_good = True
        return "", ToolCallDelta(self._calls - 1, new_call_id(), parsed[0], parsed[1])


class ForcedToolParser:
    """Output constrained to JSON by tool_choice: a named function's arguments object, or
    ("required") an array of {"name", "parameters"} objects, as vLLM forces them."""

    def __init__(self, function_name: str | None):
        self._name = function_name  # None = "required"
        self._text = ""
        self.called = False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._text += text
        return "", []

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """End of output -> (content, calls); output that is not the forced JSON is content."""
        try:
            value = json.loads(self._text)
        except ValueError:
            return self._text, []
        if self._name is not None and isinstance(value, dict):
            pairs = [(self._name, value)]
        elif self._name is None and isinstance(value, list) and all(
                isinstance(c, dict) and isinstance(c.get("name"), str)
                and isinstance(c.get("parameters", {}), dict) for c in value):
            pairs = [(c["name"], c.get("parameters", {})) for c in value]
        else:
            return self._text, []
        self.called = bool(pairs)
        return "", [ToolCallDelta(i, new_call_id(), n, json.dumps(a, ensure_ascii=False))
                    for i, (n, a) in enumerate(pairs)]
