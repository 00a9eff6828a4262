"""DeepSeek-R1-style output: `<think>…</think>` is reasoning, the rest is content, as it streams."""
from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"


def prompt_opens_think(prompt: str) -> bool:
    """The template already opened a <think> block (R1's newer template ends with "<think>\\n")."""
    return prompt.rfind(THINK_START) > prompt.rfind(THINK_END)


def partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningParser:
    """Splits streamed text into (reasoning, content); a tag split across deltas is held back."""

    def __init__(self, in_reasoning: bool = False):
        # "start": nothing shown yet, a leading <think> may still come.
        self._state = "reasoning" if in_reasoning else "start"
        self._buf = ""
        self.saw_reasoning = in_reasoning

    def feed(self, text: str) -> tuple[str, str]:
        """New text -> (new reasoning text, new content text)."""
        self._buf += text
        reasoning = content = ""
        while self._buf:
            if self._state == "start":
                stripped = self._buf.lstrip()
                if stripped.startswith(THINK_START):
                    self._buf = stripped[len(THINK_START):]
                    self._state, self.saw_reasoning = "reasoning", True
                elif THINK_START.startswith(stripped):
                    break  # still could be "<think>"
                else:
                    self._state = "content"
            elif self._state == "reasoning":
                end = self._buf.find(THINK_END)
                if end >= 0:
                    reasoning += self._buf[:end]
                    self._buf = self._buf[end + len(THINK_END):]
                    self._state = "content"
                else:
                    keep = partial_tag_len(self._buf, THINK_END)
                    reasoning += self._buf[:len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep:]
                    break
            else:
                content += self._buf
                self._buf = ""
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        """End of output: what was held back goes where the state says."""
        held, self._buf = self._buf, ""
        return (held, "") if self._state == "reasoning" else ("", held)
