"""VRRPv3 advertisement codec for IPv4 (RFC 9568 section 5), IP header included."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

VRRP_PROTO = 112
VRRP_GROUP = "224.0.0.18"
VRRP_TTL = 255
# keepalived marks adverts as network control (DSCP CS6): the captures carry TOS 0xc0.
VRRP_TOS = 0xC0
IP_HEADER_LEN = 20
VRRP_HEADER_LEN = 8


class DropError(ValueError):
    """A received packet that fails a receive check; `reason` labels the drop counter."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Advert:
    """One VRRPv3 advertisement as seen on the wire (IPv4)."""

    vrid: int
    priority: int
    max_advert_interval_cs: int  # 12 bits, centiseconds
    addresses: tuple[str, ...]
    src_ip: str = ""
    dst_ip: str = VRRP_GROUP
    ttl: int = VRRP_TTL


def inet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum over 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vrrp_checksum(payload: bytes, src_ip: str, dst_ip: str, pseudo_header: bool) -> int:
    """Checksum of a VRRP payload whose checksum field is zero."""
    if not pseudo_header:
        return inet_checksum(payload)
    pseudo = (
        ipaddress.IPv4Address(src_ip).packed
        + ipaddress.IPv4Address(dst_ip).packed
        + struct.pack("!BBH", 0, VRRP_PROTO, len(payload))
    )
    return inet_checksum(pseudo + payload)


def encode_vrrp(adv: Advert, pseudo_header: bool = True) -> bytes:
    """The VRRP part: version/type, VRID, priority, count, rsvd/interval, checksum, addresses."""
    assert 0 < adv.max_advert_interval_cs < 4096, adv.max_advert_interval_cs
    addrs = b"".join(ipaddress.IPv4Address(a).packed for a in adv.addresses)
    head = struct.pack(
        "!BBBBHH", 0x31, adv.vrid, adv.priority, len(adv.addresses),
        adv.max_advert_interval_cs & 0x0FFF, 0,
    )
    body = head + addrs
    csum = vrrp_checksum(body, adv.src_ip, adv.dst_ip, pseudo_header)
    return body[:6] + struct.pack("!H", csum) + body[8:]


def encode_ip(adv: Advert, ip_id: int, pseudo_header: bool = True) -> bytes:
    """A full IPv4 datagram as keepalived sends it: TOS 0xc0, no DF, our own IP id."""
    payload = encode_vrrp(adv, pseudo_header)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, VRRP_TOS, IP_HEADER_LEN + len(payload), ip_id & 0xFFFF, 0,
        adv.ttl, VRRP_PROTO, 0,
        ipaddress.IPv4Address(adv.src_ip).packed, ipaddress.IPv4Address(adv.dst_ip).packed,
    )
    header = header[:10] + struct.pack("!H", inet_checksum(header)) + header[12:]
    return header + payload


def _split_ip(datagram: bytes) -> tuple[bytes, bytes]:
    if len(datagram) < IP_HEADER_LEN or datagram[0] >> 4 != 4:
        raise DropError("malformed", "not an IPv4 datagram")
    ihl = (datagram[0] & 0x0F) * 4
    total = struct.unpack("!H", datagram[2:4])[0]
    if ihl < IP_HEADER_LEN or total < ihl or total > len(datagram):
        raise DropError("malformed", "bad IPv4 header lengths")
    if datagram[9] != VRRP_PROTO:
        raise DropError("malformed", f"IP protocol {datagram[9]}")
    return datagram[:ihl], datagram[ihl:total]


def decode_ip(datagram: bytes, vrid: int, address_count: int | None = None) -> Advert:
    """Parse and check a received datagram; raise DropError naming the failed check."""
    header, payload = _split_ip(datagram)
    src_ip = str(ipaddress.IPv4Address(header[12:16]))
    dst_ip = str(ipaddress.IPv4Address(header[16:20]))
    if header[8] != VRRP_TTL:
        raise DropError("ttl", f"TTL {header[8]} from {src_ip}")
    if len(payload) < VRRP_HEADER_LEN:
        raise DropError("length", f"{len(payload)} bytes from {src_ip}")
    ver_type, rx_vrid, priority, count, interval, csum = struct.unpack("!BBBBHH", payload[:8])
    if ver_type >> 4 != 3:
        raise DropError("version", f"version {ver_type >> 4} from {src_ip}")
    if ver_type & 0x0F != 1:
        raise DropError("type", f"type {ver_type & 0x0F} from {src_ip}")
    if rx_vrid != vrid:
        raise DropError("vrid", f"VRID {rx_vrid} from {src_ip}")
    if len(payload) != VRRP_HEADER_LEN + 4 * count:
        raise DropError("length", f"{len(payload)} bytes for {count} addresses from {src_ip}")
    if address_count is not None and count != address_count:
        raise DropError("address_count", f"{count} addresses from {src_ip}")
    zeroed = payload[:6] + b"\0\0" + payload[8:]
    if csum not in (vrrp_checksum(zeroed, src_ip, dst_ip, True),
                    vrrp_checksum(zeroed, src_ip, dst_ip, False)):
        raise DropError("checksum", f"checksum {csum:#06x} from {src_ip}")
    if interval & 0x0FFF == 0:
        raise DropError("interval", f"zero interval from {src_ip}")
    addresses = tuple(
        str(ipaddress.IPv4Address(payload[i:i + 4])) for i in range(8, len(payload), 4)
    )
    return Advert(rx_vrid, priority, interval & 0x0FFF, addresses, src_ip, dst_ip, header[8])
