"""asyncio glue: sockets and timers feed the state machine; its actions touch the host."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from vrrp.config import VrrpConfig
from vrrp.health import HealthCheck, effective_priority
from vrrp.host import Host
from vrrp.notify import Notifier
from vrrp.packet import DropError, decode_ip
from vrrp.state import Action, Machine, SendAdvert, SendGarp, State, Transition
from vrrp.status import Status

log = logging.getLogger(__name__)

Event = Callable[[float], list[Action]]


class Agent:
    """One virtual router: run() until stop(), leaving the host as it found it."""

    def __init__(self, cfg: VrrpConfig):
        self.cfg = cfg
        self.status = Status(cfg.vrid, cfg.status_file)
        self.status.base_priority = cfg.priority
        self.notifier = Notifier(cfg.notify_commands, cfg.notify_url, cfg.notify_timeout_s,
                                 cfg.vrid)
        self.host = Host(cfg, self.status)
        self.health = (HealthCheck(cfg.health, self._on_health, self._on_drain)
                       if cfg.health else None)
        self.machine: Machine | None = None
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self.started = asyncio.Event()  # the state machine runs (systemd's READY=1)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): priority 0 advert, VIPs removed, hooks flushed."""
        self._events.put_nowait(None)

    async def run(self) -> None:
        cfg = self.cfg
        source_ip = await self.host.open()  # removes stale VIPs before anything else
        priority = cfg.priority
        if self.health and not self.health.healthy and cfg.health.weight:
            priority = effective_priority(cfg.priority, cfg.health.weight, False)
        self.machine = Machine(priority, cfg.advert_interval_cs, source_ip, cfg.preempt,
                               cfg.preempt_delay_s)
        self.status.set_priority(priority)
        if cfg.metrics_port:
            self.status.serve_metrics(cfg.metrics_addr, cfg.metrics_port)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.host.transport.rx.fileno(), self._on_readable)
        try:
            self._spawn(self._watch_link(), self._write_status())
            if self.health:
                self._spawn(self.health.run())
            if self.health and not self.health.healthy and not cfg.health.weight:
                await self._apply(self.machine.fault(time.monotonic(), "health"))
            elif await self.host.link_up():
                await self._apply(self.machine.start(time.monotonic()))
            else:
                await self._apply(self.machine.fault(time.monotonic(), "link"))
            self.started.set()
            await self._loop()
            await self._apply(self.machine.shutdown(time.monotonic()))
        finally:
            loop.remove_reader(self.host.transport.rx.fileno())
            for task in self._tasks:
                task.cancel()
            await self.notifier.flush(cfg.notify_timeout_s)
            await self.host.close()
            self.status.write()
            self.status.close()

    def _spawn(self, *coros) -> None:
        self._tasks.extend(asyncio.create_task(c) for c in coros)

    async def _loop(self) -> None:
        machine = self.machine
        while True:
            deadline = machine.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = await asyncio.wait_for(self._events.get(), timeout)
            except asyncio.TimeoutError:
                event = machine.on_timer
            if event is None:
                return
            await self._apply(event(time.monotonic()))
            await self._apply(machine.on_timer(time.monotonic()))

    def _on_readable(self) -> None:
        for datagram in self.host.transport.receive():
            try:
                adv = decode_ip(datagram, self.cfg.vrid, len(self.cfg.vips))
            except DropError as exc:
                self.status.drop(exc.reason)
                log.debug("dropped: %s", exc)
                continue
            if not self.host.transport.accepts_source(adv.src_ip):
                self.status.drop("source")
                continue
            self.status.received()
            self._events.put_nowait(functools.partial(
                self.machine.on_advert, src_ip=adv.src_ip, priority=adv.priority,
                interval_cs=adv.max_advert_interval_cs))

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendAdvert):
                self.status.sent(self.host.send_advert(action.priority))
            elif isinstance(action, Transition):
                await self._enter(action)
            elif isinstance(action, SendGarp):
                self.host.garp_burst()

    async def _enter(self, t: Transition) -> None:
        log.warning("%s -> %s (%s)", t.old.value, t.new.value, t.reason)
        self.status.set_state(t.new)
        if t.new is State.MASTER:
            await self.host.become_master()
        elif t.old is State.MASTER:
            await self.host.leave_master()
        self.status.master_ip = self.machine.master_ip
        self.notifier.notify(t.new.value, t.old.value, self.machine.priority, t.reason)
        self.status.write()

    def _on_drain(self) -> None:
        """The API drains (SIGTERM): resign now, as a stopping agent would (priority 0), so
        the peer takes new work at once; back through INITIALIZE once the API is healthy."""
        self._events.put_nowait(functools.partial(self.machine.fault, reason="drain"))

    def _on_health(self, healthy: bool) -> None:
        if healthy:
            self._events.put_nowait(functools.partial(self.machine.clear_fault, reason="drain"))
        weight = self.cfg.health.weight
        if weight == 0:
            reason = "health"
            event = (functools.partial(self.machine.clear_fault, reason=reason) if healthy
                     else functools.partial(self.machine.fault, reason=reason))
        else:
            prio = effective_priority(self.cfg.priority, weight, healthy)
            self.status.set_priority(prio)
            event = functools.partial(self.machine.set_priority, priority=prio)
        self._events.put_nowait(event)

    async def _watch_link(self) -> None:
        was_up = await self.host.link_up()
        poll_s = min(self.cfg.advert_interval_s, 0.5)
        while True:
            await asyncio.sleep(poll_s)
            up = await self.host.link_up()
            if up != was_up:
                log.warning("interface %s %s", self.cfg.interface, "up" if up else "down")
                method = self.machine.clear_fault if up else self.machine.fault
                self._events.put_nowait(functools.partial(method, reason="link"))
                was_up = up

    async def _write_status(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.status_interval_s)
            self.status.master_ip = self.machine.master_ip
            self.status.write()
