"""Gratuitous ARP frames (as keepalived sends them) and an AF_PACKET sender."""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
BROADCAST_MAC = b"\xff" * 6


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def virtual_mac(vrid: int) -> str:
    """RFC 9568 7.3: the IPv4 virtual router MAC is 00-00-5E-00-01-{VRID}."""
    return f"00:00:5e:00:01:{vrid:02x}"


def garp_frame(mac: str, ip: str) -> bytes:
    """A broadcast ARP request for `ip` from `ip` (keepalived's form: THA all ones)."""
    sha = mac_bytes(mac)
    spa = ipaddress.IPv4Address(ip).packed
    eth = BROADCAST_MAC + sha + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + sha + spa + BROADCAST_MAC + spa
    return eth + arp


@dataclass(frozen=True)
class Garp:
    """A decoded ARP frame, enough to tell who claims which address."""

    op: int
    sender_mac: str
    sender_ip: str
    target_ip: str

    @property
    def gratuitous(self) -> bool:
        return self.sender_ip == self.target_ip


def parse_arp(frame: bytes) -> Garp | None:
    """Decode an Ethernet ARP frame for IPv4; None for anything else."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    return Garp(
        op,
        mac_str(frame[22:28]),
        str(ipaddress.IPv4Address(frame[28:32])),
        str(ipaddress.IPv4Address(frame[38:42])),
    )


class GarpSender:
    """Sends gratuitous ARPs out of one interface through an AF_PACKET socket."""

    def __init__(self, ifname: str, mac: str):
        self.ifname = ifname
        self.mac = mac
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self._sock.bind((ifname, ETH_P_ARP))
        self._sock.setblocking(False)

    def send(self, ips: list[str], count: int = 1) -> int:
        """Send `count` rounds over all `ips`; return frames sent (a full queue drops)."""
        sent = 0
        frames = [garp_frame(self.mac, ip) for ip in ips]
        for _ in range(count):
            for frame in frames:
                try:
                    self._sock.send(frame)
                    sent += 1
                except (BlockingIOError, OSError):
                    pass
        return sent

    def close(self) -> None:
        self._sock.close()
