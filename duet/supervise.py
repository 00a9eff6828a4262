"""A child process kept alive: restarted with backoff when it dies, given up on when it dies
too often, so that whoever supervises us (systemd, a shell) sees a non-zero exit.

`duet serve` runs its worker under this; the master reconnects to a restarted worker by
itself (master/pipeline_client.py).
"""
from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("duet.serve")
POLL_S = 0.2  # how often a child's liveness is checked


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a dead child and when to stop trying."""

    max_restarts: int = 5  # restarts within window_s; one more death gives up
    window_s: float = 60.0
    backoff_initial_s: float = 0.5  # doubles per restart inside the window
    backoff_max_s: float = 8.0

    def __post_init__(self):
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts: expected >= 0, got {self.max_restarts!r}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("backoff_initial_s: must be > 0 and <= backoff_max_s")


class Supervised:
    """One child process: `start()` makes it, `run()` watches it until stopped or given up."""

    def __init__(self, name: str, start: Callable[[], subprocess.Popen],
                 policy: RestartPolicy = RestartPolicy(), clock=time.monotonic):
        self.name, self._start, self.policy, self._clock = name, start, policy, clock
        self.proc: subprocess.Popen | None = None
        self.up_once = False  # set by the caller once the child served: before, a death is fatal
        self.gave_up: str | None = None  # why, once run() stopped trying
        self._restarts: deque[float] = deque()  # times of recent restarts

    def spawn(self) -> subprocess.Popen:
        self.proc = self._start()
        return self.proc

    async def run(self) -> None:
        """Return when the child cannot be kept alive (`gave_up` says why); cancel to stop."""
        while True:
            while self.proc.poll() is None:
                await asyncio.sleep(POLL_S)
            code = self.proc.returncode
            delay = self._next_delay()
            if not self.up_once or delay is None:
                self.gave_up = (f"the {self.name} exited with code {code}" if not self.up_once
                                else f"the {self.name} died {len(self._restarts) + 1} times in "
                                f"{self.policy.window_s:g} s (last exit code {code})")
                _say(f"{self.gave_up}; giving up")
                return
            _say(f"the {self.name} exited with code {code}; restarting it in {delay:.1f} s")
            await asyncio.sleep(delay)
            self._restarts.append(self._clock())
            self.spawn()

    def _next_delay(self) -> float | None:
        """Backoff before the next restart, or None when the window's budget is spent."""
        now, p = self._clock(), self.policy
        while self._restarts and now - self._restarts[0] > p.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= p.max_restarts:
            return None
        return min(p.backoff_max_s, p.backoff_initial_s * 2 ** len(self._restarts))


def _say(line: str) -> None:
    print(f"duet serve: {line}", file=sys.stderr, flush=True)
