"""Stop strings over streamed text: found across token boundaries, never shown, never leaked."""
from __future__ import annotations


class StopChecker:
    """Passes text through until a stop string appears; holds back what could start one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.stopped: str | None = None  # the stop string that ended the output
        self._pending = ""  # text seen but not yet released: a possible stop-string prefix

    def feed(self, text: str) -> str:
        """Add new text; return what is safe to show now (text before any stop string)."""
        if self.stopped is not None:
            return ""
        if not self.stops:
            return text
        self._pending += text
        hits = [(i, s) for s in self.stops if (i := self._pending.find(s)) >= 0]
        if hits:
            at, self.stopped = min(hits)
            out, self._pending = self._pending[:at], ""
            return out
        keep = self._held_suffix_len()
        out = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep:]
        return out

    def flush(self) -> str:
        """The output ended without a stop string: release what was held back."""
        out, self._pending = self._pending, ""
        return out

    def _held_suffix_len(self) -> int:
        """Length of the longest tail of the pending text that begins some stop string."""
        text = self._pending
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
