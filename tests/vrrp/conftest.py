"""Fixtures for the VRRP tests: the keepalived captures and a namespace lab."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

# CI has ../shared beside the clone; the captures are keepalived 2.2.7's.
VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "vrrp"


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """Frames of a classic little-endian microsecond pcap (what the captures are)."""
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack("<IHHiIII", data[:24])
    assert magic == 0xA1B2C3D4 and linktype == 1, (hex(magic), linktype)
    frames, off = [], 24
    while off < len(data):
        sec, usec, incl, _orig = struct.unpack("<IIII", data[off:off + 16])
        frames.append((sec + usec / 1e6, data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return frames


@pytest.fixture(scope="session")
def captures() -> dict[str, list[tuple[float, bytes]]]:
    if not VECTORS.is_dir():
        pytest.skip(f"keepalived captures not found at {VECTORS}")
    return {p.stem: read_pcap(p) for p in sorted(VECTORS.glob("*.pcap"))}


def _netns_unavailable() -> str:
    if os.geteuid() != 0:
        return "network namespace tests need root"
    if shutil.which("ip") is None or shutil.which("bridge") is None:
        return "iproute2 (ip, bridge) not installed"
    return ""


@pytest.fixture
def lab():
    """A fresh bridge with namespaces a, b, c; torn down even when the test fails."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    from vrrp.lab import Lab

    lab = Lab()
    try:
        yield lab
    finally:
        for name, agent in lab.agents.items():
            if agent.proc.poll() is not None and agent.proc.returncode not in (0, -9, -15):
                print(f"--- agent {name} log ---\n{agent.log()}")
        lab.close()
