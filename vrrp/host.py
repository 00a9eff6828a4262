"""The host side of being master: VIPs on the interface, gratuitous ARPs, adverts out."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from vrrp.arp import GarpSender, virtual_mac
from vrrp.config import VrrpConfig
from vrrp.netlink import HostNet, restrict_arp
from vrrp.status import Status
from vrrp.transport import Transport

log = logging.getLogger(__name__)


class Host:
    """Owns the netlink socket, the raw sockets and the while-master duties."""

    def __init__(self, cfg: VrrpConfig, status: Status):
        self.cfg = cfg
        self.status = status
        self.net: HostNet | None = None
        self.transport: Transport | None = None
        self.garp: GarpSender | None = None
        self.parent_index = 0
        self.vip_index = 0  # where VIPs live: the interface, or the vmac macvlan
        self._duties: asyncio.Task | None = None

    async def open(self) -> str:
        """Clear stale VIPs, set up the vmac and sockets; return the advert source IP."""
        cfg = self.cfg
        self.net = HostNet()
        link = await self.net.link(cfg.interface)
        self.parent_index = self.vip_index = link.index
        self.status.stale_vips_removed = await self._remove_vips(link.index)
        source_ip = cfg.source_ip or _primary_ip(link.ipv4, cfg.vips, cfg.interface)
        vip_ifname, vip_mac = cfg.interface, link.mac
        if cfg.use_vmac:
            vip_ifname, vip_mac = cfg.vmac_name, virtual_mac(cfg.vrid)
            self.vip_index = await self.net.ensure_macvlan(link.index, vip_ifname, vip_mac)
            self.status.stale_vips_removed += await self._remove_vips(self.vip_index)
            restrict_arp(cfg.interface)
        self.transport = Transport(
            cfg.interface, link.index, source_ip, cfg.unicast_peers,
            send_ifname=vip_ifname, send_ifindex=self.vip_index,
            pseudo_header=cfg.checksum_pseudo_header,
        )
        self.garp = GarpSender(vip_ifname, vip_mac)
        return source_ip

    async def _remove_vips(self, index: int) -> list[str]:
        removed = [vip for vip in self.cfg.vips if await self.net.remove_vip(index, vip)]
        if removed:
            log.warning("removed stale VIPs %s", ", ".join(removed))
        return removed

    async def link_up(self) -> bool:
        return await self.net.link_up(self.parent_index)

    def send_advert(self, priority: int) -> int:
        cfg = self.cfg
        return self.transport.send_advert(cfg.vrid, priority, cfg.advert_interval_cs,
                                          cfg.vip_addresses)

    def garp_burst(self) -> int:
        sent = self.garp.send(list(self.cfg.vip_addresses), self.cfg.garp_burst_count)
        self.status.garps(sent)
        return sent

    async def become_master(self) -> None:
        self.status.vip_add_monotonic_s = time.monotonic()  # before the request: conservative
        for vip in self.cfg.vips:
            await self.net.add_vip(self.vip_index, vip)
        self.garp_burst()
        self.status.first_garp_monotonic_s = time.monotonic()
        self._stop_duties()
        self._duties = asyncio.create_task(self._master_duties())

    async def leave_master(self) -> None:
        self._stop_duties()
        await self._remove_vips(self.vip_index)

    def _stop_duties(self) -> None:
        if self._duties is not None:
            self._duties.cancel()
            self._duties = None

    async def _master_duties(self) -> None:
        """Second GARP burst, optional refresh, and re-adding a VIP someone removed."""
        cfg = self.cfg
        start = time.monotonic()
        repeat_at = start + cfg.garp_repeat_delay_s if cfg.garp_repeat_delay_s else math.inf
        refresh_at = start + cfg.garp_refresh_s if cfg.garp_refresh_s else math.inf
        check_at = start + cfg.vip_check_interval_s
        while True:
            await asyncio.sleep(max(0.0, min(repeat_at, refresh_at, check_at) - time.monotonic()))
            now = time.monotonic()
            if now >= check_at:
                check_at = now + cfg.vip_check_interval_s
                missing = [v for v in cfg.vips if not await self.net.has_vip(self.vip_index, v)]
                for vip in missing:
                    log.error("VIP %s vanished while master; adding it back", vip)
                    await self.net.add_vip(self.vip_index, vip)
                if missing:
                    self.garp_burst()
            if now >= repeat_at:
                repeat_at = math.inf
                self.garp_burst()
            if now >= refresh_at:
                refresh_at = now + cfg.garp_refresh_s
                self.garp_burst()

    async def close(self) -> None:
        self._stop_duties()
        if self.net is None:
            return
        if self.cfg.use_vmac:
            await self.net.remove_link(self.cfg.vmac_name)
        if self.transport:
            self.transport.close()
        if self.garp:
            self.garp.close()
        self.net.close()


def _primary_ip(ipv4: tuple[str, ...], vips: tuple[str, ...], ifname: str) -> str:
    own = [a.split("/")[0] for a in ipv4 if a not in vips]
    if not own:
        raise ValueError(f"interface {ifname!r} has no IPv4 address of its own to advertise from")
    return own[0]
