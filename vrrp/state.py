"""The VRRPv3 state machine (RFC 9568 6.4): events in, actions out, timers as data.

No sockets and no clock: every method takes `now` (monotonic seconds) and returns the
actions the caller must carry out, in order. Deadlines are absolute times in `timers`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum


class State(str, Enum):
    INITIALIZE = "INITIALIZE"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"


@dataclass(frozen=True)
class SendAdvert:
    """Send one advertisement with this priority (0 = I am leaving)."""

    priority: int


@dataclass(frozen=True)
class Transition:
    """The state changed; the caller adds/removes VIPs, sends GARPs, notifies."""

    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class SendGarp:
    """Re-announce the VIPs (another master was heard: clients may point at it)."""


Action = SendAdvert | Transition | SendGarp


@dataclass
class Timers:
    adver_at: float | None = None  # Master: next periodic advertisement
    master_down_at: float | None = None  # Backup: declare the master dead


@dataclass
class Machine:
    """One virtual router's protocol state."""

    priority: int  # effective priority (health checks move it)
    advert_interval_cs: int
    primary_ip: str
    preempt: bool = True
    preempt_delay_s: float = 0.0
    state: State = State.INITIALIZE
    master_adver_interval_cs: int = 0
    master_ip: str = ""  # the master we last accepted, "" if none
    preempt_after: float = 0.0  # no preemption before this time (preempt_delay_s)
    faults: set[str] = field(default_factory=set)
    timers: Timers = field(default_factory=Timers)

    def __post_init__(self) -> None:
        self.master_adver_interval_cs = self.master_adver_interval_cs or self.advert_interval_cs

    @property
    def advert_interval_s(self) -> float:
        return self.advert_interval_cs / 100

    @property
    def skew_time_s(self) -> float:
        return (256 - self.priority) * self.master_adver_interval_cs / 256 / 100

    @property
    def master_down_interval_s(self) -> float:
        return 3 * self.master_adver_interval_cs / 100 + self.skew_time_s

    def next_deadline(self) -> float | None:
        pending = [t for t in (self.timers.adver_at, self.timers.master_down_at) if t is not None]
        return min(pending, default=None)

    def _go(self, new: State, reason: str) -> Transition:
        old, self.state = self.state, new
        return Transition(old, new, reason)

    def _become_master(self, now: float, reason: str) -> list[Action]:
        self.timers = Timers(adver_at=now + self.advert_interval_s)
        self.master_ip = self.primary_ip
        return [SendAdvert(self.priority), self._go(State.MASTER, reason)]

    def _become_backup(self, now: float, reason: str) -> list[Action]:
        self.timers = Timers(master_down_at=now + self.master_down_interval_s)
        return [self._go(State.BACKUP, reason)]

    def start(self, now: float) -> list[Action]:
        """Startup event: the owner (255) becomes master at once, others listen first."""
        if self.faults or self.state is not State.INITIALIZE:
            return []
        if self.priority == 255:
            return self._become_master(now, "address owner")
        self.master_adver_interval_cs = self.advert_interval_cs
        self.master_ip = ""
        self.preempt_after = now + self.preempt_delay_s
        return self._become_backup(now, "startup")

    def shutdown(self, now: float) -> list[Action]:
        """Graceful stop: a master says priority 0 so a backup takes over after Skew_Time."""
        actions: list[Action] = []
        if self.state is State.MASTER:
            actions.append(SendAdvert(0))
        self.timers = Timers()
        if self.state is not State.INITIALIZE:
            actions.append(self._go(State.INITIALIZE, "shutdown"))
        return actions

    def on_timer(self, now: float) -> list[Action]:
        t = self.timers
        if self.state is State.BACKUP and t.master_down_at is not None and now >= t.master_down_at:
            return self._become_master(now, "master down")
        if self.state is State.MASTER and t.adver_at is not None and now >= t.adver_at:
            t.adver_at = now + self.advert_interval_s
            return [SendAdvert(self.priority)]
        return []

    def on_advert(self, now: float, src_ip: str, priority: int, interval_cs: int) -> list[Action]:
        if self.state is State.BACKUP:
            return self._backup_advert(now, src_ip, priority, interval_cs)
        if self.state is State.MASTER:
            return self._master_advert(now, src_ip, priority, interval_cs)
        return []

    def _accept_master(self, now: float, src_ip: str, interval_cs: int) -> None:
        self.master_adver_interval_cs = interval_cs
        self.master_ip = src_ip
        self.timers = Timers(master_down_at=now + self.master_down_interval_s)

    def _backup_advert(self, now: float, src_ip: str, priority: int, interval_cs: int):
        if priority == 0:
            self.timers.master_down_at = now + self.skew_time_s
            return []
        may_preempt = self.preempt and now >= self.preempt_after
        if not may_preempt or priority >= self.priority:
            self._accept_master(now, src_ip, interval_cs)
        return []  # else: discard, so Master_Down_Timer fires and we preempt

    def _master_advert(self, now: float, src_ip: str, priority: int, interval_cs: int):
        if priority == 0:  # another master leaves: clients may point at it, so GARP too
            self.timers.adver_at = now + self.advert_interval_s
            return [SendAdvert(self.priority), SendGarp()]
        outranked = priority == self.priority and _ip_gt(src_ip, self.primary_ip)
        if priority > self.priority or outranked:
            self._accept_master(now, src_ip, interval_cs)
            # Beyond the RFC: say goodbye (priority 0) so the winner re-announces the VIPs
            # to clients that learnt our MAC during a split brain.
            reason = f"higher priority {priority} from {src_ip}"
            return [SendAdvert(0), self._go(State.BACKUP, reason)]
        # RFC 9568: assert mastership at once, which heals a split brain in one exchange;
        # and GARP, since clients may have learnt the other master's MAC meanwhile.
        self.timers.adver_at = now + self.advert_interval_s
        return [SendAdvert(self.priority), SendGarp()]

    def set_priority(self, now: float, priority: int) -> list[Action]:
        """Effective priority changed (health); a master advertises it at once."""
        assert 1 <= priority <= 255, priority
        if priority == self.priority:
            return []
        self.priority = priority
        if self.state is State.MASTER:
            self.timers.adver_at = now + self.advert_interval_s
            return [SendAdvert(priority)]
        return []

    def fault(self, now: float, reason: str) -> list[Action]:
        """Enter FAULT (link down, health with weight 0); a master says goodbye first."""
        first = not self.faults
        self.faults.add(reason)
        if not first or self.state is State.FAULT:
            return []
        actions: list[Action] = [SendAdvert(0)] if self.state is State.MASTER else []
        self.timers = Timers()
        return actions + [self._go(State.FAULT, reason)]

    def clear_fault(self, now: float, reason: str) -> list[Action]:
        """A fault cleared; with none left, start over through INITIALIZE."""
        self.faults.discard(reason)
        if self.faults or self.state is not State.FAULT:
            return []
        return [self._go(State.INITIALIZE, f"{reason} recovered")] + self.start(now)


def _ip_gt(a: str, b: str) -> bool:
    return ipaddress.IPv4Address(a) > ipaddress.IPv4Address(b)
