"""Agent configuration: the `[vrrp]` section of a TOML file, validated once."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from runtime.settings import read_toml, settings_from_dict


@dataclass(frozen=True)
class HealthConfig:
    """HTTP check of the local API's /ready; `weight` follows keepalived's sign rules."""

    url: str
    interval_s: float = 1.0
    timeout_s: float = 0.5
    rise: int = 2
    fall: int = 2
    weight: int = -60  # <0: added while failing; >0: added while healthy; 0: failing = FAULT
    # keepalived's init_fail: start as failing until `rise` probes pass, so an agent started
    # before its API is ready does not preempt with the full priority.
    init_fail: bool = False

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"health.url: must be an http(s) URL, got {self.url!r}")
        _positive("health.interval_s", self.interval_s)
        _positive("health.timeout_s", self.timeout_s)
        for name in ("rise", "fall"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"health.{name}: must be 1..100")
        if not -253 <= self.weight <= 253:
            raise ValueError("health.weight: must be -253..253")


@dataclass(frozen=True)
class VrrpConfig:
    """One virtual router instance (IPv4, VRRPv3)."""

    interface: str
    vrid: int
    priority: int
    vips: tuple[str, ...]  # "address/prefixlen"
    advert_interval_s: float = 1.0
    preempt: bool = True
    preempt_delay_s: float = 0.0
    unicast_peers: tuple[str, ...] = ()  # empty: multicast to 224.0.0.18
    source_ip: str = ""  # empty: the interface's primary IPv4 address
    checksum_pseudo_header: bool = True  # False: VRRP-only checksum (some old stacks)
    garp_burst_count: int = 5
    garp_repeat_delay_s: float = 5.0  # second burst after becoming master; 0 = none
    garp_refresh_s: float = 0.0  # periodic burst while master; 0 = off
    vip_check_interval_s: float = 1.0
    use_vmac: bool = False
    vmac_ifname: str = ""  # default "vrrp.<vrid>"
    status_file: str = ""
    status_interval_s: float = 1.0
    metrics_port: int = 0  # 0 = no metrics server
    metrics_addr: str = "127.0.0.1"
    notify_commands: tuple[tuple[str, ...], ...] = ()  # each gets the new state appended
    notify_url: str = ""
    notify_timeout_s: float = 5.0
    realtime_priority: int = 0  # SCHED_RR priority (like keepalived's vrrp_rt_priority); 0 = off
    health: HealthConfig | None = None

    def __post_init__(self) -> None:
        if not self.interface or len(self.interface) > 15:
            raise ValueError("interface: must be an interface name of 1..15 characters")
        if not 1 <= self.vrid <= 255:
            raise ValueError("vrid: must be 1..255")
        if not 1 <= self.priority <= 255:
            raise ValueError("priority: must be 1..255 (255 = address owner)")
        if not self.vips:
            raise ValueError("vips: at least one virtual address is required")
        for vip in self.vips:
            _ipv4_interface("vips", vip)
        cs = round(self.advert_interval_s * 100)
        if not 1 <= cs <= 4095 or abs(cs - self.advert_interval_s * 100) > 1e-6:
            raise ValueError("advert_interval_s: must be 0.01..40.95 in steps of 0.01")
        for name in ("preempt_delay_s", "garp_repeat_delay_s", "garp_refresh_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        for name in ("vip_check_interval_s", "status_interval_s", "notify_timeout_s"):
            _positive(name, getattr(self, name))
        for peer in self.unicast_peers:
            _ipv4_address("unicast_peers", peer)
        if self.source_ip:
            _ipv4_address("source_ip", self.source_ip)
        if not 1 <= self.garp_burst_count <= 100:
            raise ValueError("garp_burst_count: must be 1..100")
        if not 0 <= self.realtime_priority <= 99:
            raise ValueError("realtime_priority: must be 0..99 (0 = normal scheduling)")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port: must be 0..65535")
        if self.notify_url and not self.notify_url.startswith(("http://", "https://")):
            raise ValueError("notify_url: must be an http(s) URL")
        if any(not cmd for cmd in self.notify_commands):
            raise ValueError("notify_commands: each command must be a non-empty list")

    @property
    def advert_interval_cs(self) -> int:
        return round(self.advert_interval_s * 100)

    @property
    def vip_addresses(self) -> tuple[str, ...]:
        return tuple(v.split("/")[0] for v in self.vips)

    @property
    def vmac_name(self) -> str:
        return self.vmac_ifname or f"vrrp.{self.vrid}"


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}: must be > 0")


def _ipv4_address(name: str, value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{name}: not an IPv4 address: {value!r}") from None


def _ipv4_interface(name: str, value: str) -> None:
    if "/" not in value:
        raise ValueError(f"{name}: {value!r} needs a prefix length, e.g. 192.0.2.100/24")
    try:
        ipaddress.IPv4Interface(value)
    except ValueError:
        raise ValueError(f"{name}: not an IPv4 address/prefix: {value!r}") from None


def config_from_dict(raw: dict, where: str | Path | None = None) -> VrrpConfig:
    """The agent's config from a parsed [vrrp] table; ValueError names the bad field."""
    return settings_from_dict(VrrpConfig, raw, env_prefix=None, text_values=False, where=where)


def load_config(path: str | Path, section: str = "vrrp") -> VrrpConfig:
    """Read the `[vrrp]` table of a TOML file; ValueError names the file and the bad field."""
    return config_from_dict(read_toml(path, section, table_required=True), where=path)
