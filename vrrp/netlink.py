"""Host effects through pyroute2's async API: VIPs, link state, the virtual-MAC macvlan."""

from __future__ import annotations

import errno
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    """What the agent needs to know about an interface."""

    index: int
    name: str
    mac: str
    up: bool  # administratively up and carrier present
    ipv4: tuple[str, ...]  # "address/prefixlen", kernel order (primary first)


def _split(vip: str) -> tuple[str, int]:
    iface = ipaddress.IPv4Interface(vip)
    return str(iface.ip), iface.network.prefixlen


def _is_up(msg) -> bool:
    """Administratively up with carrier (a veth whose peer is gone has none)."""
    return bool(msg["flags"] & 1) and msg.get("carrier", 1) == 1 and msg.get("operstate") != "DOWN"


class HostNet:
    """One rtnetlink socket, used only from the agent's event loop."""

    def __init__(self) -> None:
        self._ipr = AsyncIPRoute()

    async def link(self, ifname: str) -> Link:
        """Look an interface up; ValueError if it does not exist."""
        found = await self._ipr.link_lookup(ifname=ifname)
        if not found:
            raise ValueError(f"interface {ifname!r} not found")
        msg = (await self._ipr.link("get", index=found[0]))[0]
        addrs = [a async for a in await self._ipr.addr("dump", index=found[0])]
        ipv4 = tuple(f"{a.get('address')}/{a['prefixlen']}" for a in addrs if a["family"] == 2)
        return Link(found[0], ifname, msg.get("address"), _is_up(msg), ipv4)

    async def link_up(self, index: int) -> bool:
        msg = (await self._ipr.link("get", index=index))[0]
        return _is_up(msg)

    async def has_vip(self, index: int, vip: str) -> bool:
        address, prefixlen = _split(vip)
        addrs = [a async for a in await self._ipr.addr("dump", index=index)]
        return any(a.get("address") == address and a["prefixlen"] == prefixlen for a in addrs)

    async def _change_addr(self, command: str, index: int, vip: str, benign: tuple) -> bool:
        """add/del one address; False (no error) when it was already so (idempotent)."""
        address, prefixlen = _split(vip)
        try:
            await self._ipr.addr(command, index=index, address=address, prefixlen=prefixlen)
            return True
        except NetlinkError as exc:
            if exc.code in benign:
                return False
            raise

    async def add_vip(self, index: int, vip: str) -> bool:
        """True if it was added now, False if it was already there."""
        return await self._change_addr("add", index, vip, (errno.EEXIST,))

    async def remove_vip(self, index: int, vip: str) -> bool:
        """True if it was there."""
        return await self._change_addr("del", index, vip, (errno.EADDRNOTAVAIL, errno.ENODEV))

    async def ensure_macvlan(self, parent: int, name: str, mac: str) -> int:
        """Create (or reuse) a private-mode macvlan carrying the virtual MAC; return its index."""
        found = await self._ipr.link_lookup(ifname=name)
        if not found:
            await self._ipr.link("add", ifname=name, kind="macvlan", link=parent,
                                 macvlan_mode="private", address=mac)
            found = await self._ipr.link_lookup(ifname=name)
        await self._ipr.link("set", index=found[0], state="up")
        return found[0]

    async def remove_link(self, name: str) -> None:
        found = await self._ipr.link_lookup(ifname=name)
        if found:
            await self._ipr.link("del", index=found[0])

    def close(self) -> None:
        self._ipr.close()


def restrict_arp(ifname: str) -> None:
    """Beside a vmac, keep the parent from speaking for the VIP: answer ARP only for its own
    addresses (arp_ignore=1) and never source its ARP requests from the VIP (arp_announce=2),
    or clients would learn the parent's MAC for the VIP."""
    for name in (ifname, "all"):
        for key, value in (("arp_ignore", 1), ("arp_announce", 2)):
            path = Path(f"/proc/sys/net/ipv4/conf/{name}/{key}")
            try:
                path.write_text(f"{value}\n")
            except OSError as exc:
                log.warning("cannot set %s: %s", path, exc)
