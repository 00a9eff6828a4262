"""How long a lost worker's sequences wait for the next one (recovery_budget_s), and the
notice of a worker that drains (SIGTERM): the PipelineDriver's clock for rebuilding."""
from __future__ import annotations

import time
from dataclasses import dataclass

from proto import pipeline_pb2 as pb


@dataclass
class RecoveryClock:
    """The deadline while rebuilding, why the worker was lost, and its drain notice if any."""

    budget_s: float  # recovery_budget_s; 0 = fail at once
    until: float | None = None  # monotonic deadline while rebuilding
    reason: str = ""
    drain: pb.Drain | None = None  # the worker asked this stream to pause

    @property
    def waiting(self) -> bool:
        """The worker was lost less than the budget ago: new requests wait for it."""
        return self.until is not None and time.monotonic() < self.until

    def lost(self, reason: str) -> None:
        """The stream broke. A relapse while rebuilding keeps the deadline. A drained worker
        is a planned restart: its own start-up time (`Drain.startup_s`) is not charged."""
        startup_s = self.drain.startup_s if self.drain is not None else 0.0
        self.drain = None
        if self.until is None and self.budget_s > 0:
            self.until = time.monotonic() + self.budget_s + startup_s
            self.reason = reason

    def left_s(self) -> float:
        return max(0.0, self.until - time.monotonic()) if self.until is not None else 0.0

    def expire(self) -> str:
        """The deadline passed: stop waiting; the reason the sequences fail with."""
        self.until = None
        return (f"the worker did not come back within {self.budget_s:g} s "
                f"(recovery_budget_s): {self.reason}")
