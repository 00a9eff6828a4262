"""Raw IP (protocol 112) sockets: multicast bound to the interface, or unicast peers."""

from __future__ import annotations

import logging
import socket
import struct

from vrrp.packet import VRRP_GROUP, VRRP_PROTO, VRRP_TTL, Advert, encode_ip

log = logging.getLogger(__name__)

# Linux values Python's socket module does not export.
IP_MULTICAST_ALL = 49
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
RECV_BUFFER_BYTES = 65535


def _bound_raw_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTO)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    sock.setblocking(False)
    return sock


def _mreqn(group: str, source_ip: str, ifindex: int) -> bytes:
    return struct.pack("4s4si", socket.inet_aton(group), socket.inet_aton(source_ip), ifindex)


class Transport:
    """Sends our adverts (we build the IP header, as keepalived does) and receives theirs."""

    def __init__(
        self,
        ifname: str,
        ifindex: int,
        source_ip: str,
        peers: tuple[str, ...] = (),
        send_ifname: str = "",
        send_ifindex: int = 0,
        pseudo_header: bool = True,
    ):
        self.source_ip = source_ip
        self.peers = peers
        self.pseudo_header = pseudo_header
        self._ip_id = 0  # keepalived numbers its adverts 1, 2, ... per process
        self.rx = _bound_raw_socket(ifname)
        if not peers:
            self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                               _mreqn(VRRP_GROUP, source_ip, ifindex))
            self.rx.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        self.tx = self.rx
        if send_ifname and send_ifname != ifname:
            self.tx = _bound_raw_socket(send_ifname)
            ifindex = send_ifindex
        if not peers:
            self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                               _mreqn(VRRP_GROUP, source_ip, ifindex))
            self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, VRRP_TTL)

    @property
    def destinations(self) -> tuple[str, ...]:
        return self.peers or (VRRP_GROUP,)

    def send_advert(self, vrid: int, priority: int, interval_cs: int,
                    addresses: tuple[str, ...]) -> int:
        """Send one advert to each destination; return how many left the socket."""
        sent = 0
        for dst in self.destinations:
            self._ip_id = self._ip_id % 0xFFFF + 1
            adv = Advert(vrid, priority, interval_cs, addresses, self.source_ip, dst)
            try:
                self.tx.sendto(encode_ip(adv, self._ip_id, self.pseudo_header), (dst, 0))
                sent += 1
            except OSError as exc:  # link down, no route: the state machine goes on
                log.warning("advert to %s not sent: %s", dst, exc)
        return sent

    def receive(self) -> list[bytes]:
        """Drain the socket; each item is a full IPv4 datagram."""
        out = []
        while True:
            try:
                out.append(self.rx.recv(RECV_BUFFER_BYTES))
            except (BlockingIOError, InterruptedError):
                return out

    def accepts_source(self, src_ip: str) -> bool:
        """Unicast mode only trusts configured peers; never our own adverts."""
        if src_ip == self.source_ip:
            return False
        return not self.peers or src_ip in self.peers

    def close(self) -> None:
        if self.tx is not self.rx:
            self.tx.close()
        self.rx.close()
