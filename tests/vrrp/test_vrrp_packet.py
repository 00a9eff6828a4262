"""The codec against keepalived 2.2.7's captures, and every receive check."""

from __future__ import annotations

import struct

import pytest

from vrrp.arp import garp_frame, parse_arp
from vrrp.packet import Advert, DropError, decode_ip, encode_ip, inet_checksum

A = ("10.99.0.1", "02:99:00:00:00:01")
B = ("10.99.0.2", "02:99:00:00:00:02")
VIP = "10.99.0.100"
MCAST_MAC = bytes.fromhex("01005e000012")


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def _eth_ip(src_mac: str, datagram: bytes) -> bytes:
    return MCAST_MAC + _mac(src_mac) + b"\x08\x00" + datagram


def _vrrp_frames(frames):
    return [f for _, f in frames if f[12:14] == b"\x08\x00" and f[23] == 112]


@pytest.mark.parametrize("name", ["keepalived_adv1_kill9", "keepalived_adv1_term",
                                  "keepalived_adv0.1_term"])
def test_every_captured_advert_is_reproduced(captures, name):
    """Rebuild each advert from its decoded fields; A and B number their IP ids 1, 2, ..."""
    frames = _vrrp_frames(captures[name])
    assert frames
    for frame in frames:
        src = "10.99.0.1" if frame[6:12] == _mac(A[1]) else "10.99.0.2"
        mac = A[1] if src == A[0] else B[1]
        ip_id = struct.unpack("!H", frame[18:20])[0]
        adv = Advert(vrid=51, priority=frame[36], max_advert_interval_cs=frame[39],
                     addresses=(VIP,), src_ip=src)
        assert _eth_ip(mac, encode_ip(adv, ip_id)) == frame


def test_captured_fields_decode(captures):
    frame = _vrrp_frames(captures["keepalived_adv0.1_term"])[0]
    adv = decode_ip(frame[14:], vrid=51, address_count=1)
    assert (adv.priority, adv.max_advert_interval_cs, adv.addresses, adv.src_ip) == \
        (150, 10, (VIP,), "10.99.0.1")


def test_priority_zero_advert_matches_capture(captures):
    frames = _vrrp_frames(captures["keepalived_adv0.1_term"])
    stop = next(f for f in frames if f[36] == 0)
    adv = Advert(51, 0, 10, (VIP,), "10.99.0.1")
    assert _eth_ip(A[1], encode_ip(adv, 0x17)) == stop


@pytest.mark.parametrize("name", ["keepalived_adv1_kill9", "keepalived_adv1_term",
                                  "keepalived_adv0.1_term"])
def test_every_captured_garp_is_reproduced(captures, name):
    garps = [f for _, f in captures[name] if (a := parse_arp(f)) and a.gratuitous]
    assert len(garps) >= 5  # keepalived's burst of 5 at the transition
    for frame in garps:
        arp = parse_arp(frame)
        assert garp_frame(arp.sender_mac, arp.sender_ip) == frame


def test_pseudo_header_checksum_is_keepalived_default():
    adv = Advert(51, 150, 10, (VIP,), "10.99.0.1")
    with_pseudo = encode_ip(adv, 1)[20:]
    plain = encode_ip(adv, 1, pseudo_header=False)[20:]
    assert with_pseudo[6:8] == bytes.fromhex("4307")
    assert plain != with_pseudo and inet_checksum(plain) == 0
    # both forms are accepted on receive
    for payload in (with_pseudo, plain):
        assert decode_ip(encode_ip(adv, 1)[:20] + payload, 51, 1).priority == 150


def _good() -> bytearray:
    return bytearray(encode_ip(Advert(51, 100, 10, (VIP,), "10.99.0.2"), 7))


def _fix_ip_checksum(d: bytearray) -> bytes:
    d[10:12] = b"\0\0"
    d[10:12] = struct.pack("!H", inet_checksum(bytes(d[:20])))
    return bytes(d)


def _mutate(offset: int, value: int) -> bytes:
    d = _good()
    d[offset] = value
    return _fix_ip_checksum(d)


@pytest.mark.parametrize("datagram, reason", [
    (_mutate(8, 254), "ttl"),  # TTL must be 255 (one hop)
    (_mutate(20, 0x21), "version"),
    (_mutate(20, 0x32), "type"),
    (_mutate(21, 52), "vrid"),
    (_mutate(23, 2), "length"),  # count says 2 addresses, one present
    (_mutate(27, 0x00), "checksum"),
    (bytes(_good()[:24]), "malformed"),  # IP total length beyond the data
    (b"\x45\x00", "malformed"),
])
def test_receive_checks_name_the_reason(datagram, reason):
    with pytest.raises(DropError) as exc:
        decode_ip(datagram, vrid=51, address_count=1)
    assert exc.value.reason == reason


def test_zero_interval_and_address_count_are_dropped():
    zero = encode_ip(Advert(51, 100, 10, (VIP,), "10.99.0.2"), 1)
    # rebuild with interval 0 and a valid checksum
    body = bytearray(zero[20:])
    body[4:8] = b"\0\0\0\0"
    from vrrp.packet import vrrp_checksum
    body[6:8] = struct.pack("!H", vrrp_checksum(bytes(body), "10.99.0.2", "224.0.0.18", True))
    with pytest.raises(DropError, match="interval"):
        decode_ip(zero[:20] + bytes(body), 51, 1)
    two = encode_ip(Advert(51, 100, 10, (VIP, "10.99.0.101"), "10.99.0.2"), 1)
    with pytest.raises(DropError, match="address_count"):
        decode_ip(two, 51, 1)
    assert decode_ip(two, 51, None).addresses == (VIP, "10.99.0.101")
