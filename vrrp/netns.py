"""Namespace helpers for the lab: `ip` commands, sockets opened inside a netns, a sniffer."""

from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable

from vrrp.arp import Garp, parse_arp

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def run_ip(*args: str) -> str:
    """Run iproute2's `ip`; raise with its stderr on failure."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def socket_in_netns(netns: str, *args) -> socket.socket:
    """Open a socket inside a named netns; it stays there, this thread comes back."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            return socket.socket(*args)
        finally:
            if libc.setns(own, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


class Sniffer:
    """Records every frame seen on an interface with its arrival time on the monotonic clock.

    The time is the kernel's receive timestamp (so our own thread's scheduling delay is not
    counted), moved from the realtime to the monotonic clock by their offset at start.
    """

    def __init__(self, netns: str, ifname: str):
        self._sock = socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_RAW,
                                     socket.htons(ETH_P_ALL))
        self._sock.bind((ifname, ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._realtime_minus_monotonic = time.time() - time.monotonic()
        self.frames: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if ready:
                frame, ancillary, _, _ = self._sock.recvmsg(65535, 64)
                t = time.monotonic()
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", data[:16])
                        t = min(t, sec + nsec / 1e9 - self._realtime_minus_monotonic)
                with self._lock:
                    self.frames.append((t, frame))

    def snapshot(self, since: float = 0.0) -> list[tuple[float, bytes]]:
        with self._lock:
            return [(t, f) for t, f in self.frames if t >= since]

    def garps(self, since: float = 0.0) -> list[tuple[float, Garp]]:
        out = []
        for t, frame in self.snapshot(since):
            arp = parse_arp(frame)
            if arp is not None and arp.gratuitous:
                out.append((t, arp))
        return out

    def first_garp(self, mac: str, ip: str, since: float = 0.0) -> float | None:
        """Arrival time of the first gratuitous ARP for `ip` from `mac` after `since`."""
        for t, arp in self.garps(since):
            if arp.sender_mac == mac and arp.sender_ip == ip:
                return t
        return None

    def wait_for(self, pick: Callable[[], float | None], timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = pick()
            if value is not None:
                return value
            time.sleep(0.005)
        return pick()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
