"""Load progress people can watch: a tqdm bar on a terminal, log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("duet.engine.load")

_LOG_EVERY = 0.1  # share of the total between two log lines when not on a terminal


class LoadProgress:
    """Counts bytes loaded towards a known total; logs the time taken when closed."""

    def __init__(self, what: str, total_bytes: int, stream=None):
        self.what, self.total_bytes, self.done_bytes = what, max(total_bytes, 1), 0
        self.started = time.perf_counter()
        self._next_log = _LOG_EVERY
        stream = stream if stream is not None else sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        self._bar = (
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc=what, file=stream, leave=False)
            if tty
            else None
        )
        log.info("%s: %.2f GiB to load", what, total_bytes / 2**30)

    def update(self, nbytes: int) -> None:
        self.done_bytes += nbytes
        if self._bar is not None:
            self._bar.update(nbytes)
            return
        share = self.done_bytes / self.total_bytes
        if share >= self._next_log:
            log.info("%s: %3.0f%% (%.1f s)", self.what, 100 * share, self.elapsed_s)
            while self._next_log <= share:
                self._next_log += _LOG_EVERY

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def close(self, detail: str = "") -> float:
        """Stop the bar and log the final line; returns the seconds taken."""
        if self._bar is not None:
            self._bar.close()
        seconds = self.elapsed_s
        log.info("%s: done in %.1f s%s", self.what, seconds, f" ({detail})" if detail else "")
        return seconds
