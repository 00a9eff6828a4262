"""Config validation (errors name the field) and the CLI's one-line failures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vrrp.service import missing_capabilities
from vrrp.config import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]
GOOD = {"interface": "eth0", "vrid": 51, "priority": 150, "vips": ["192.0.2.100/24"]}


def test_minimal_config_and_defaults():
    cfg = config_from_dict(GOOD)
    assert cfg.advert_interval_cs == 100 and cfg.vip_addresses == ("192.0.2.100",)
    assert cfg.preempt and cfg.checksum_pseudo_header and cfg.health is None
    assert cfg.vmac_name == "vrrp.51"


@pytest.mark.parametrize("change, field", [
    ({"vrid": 0}, "vrid"),
    ({"priority": 256}, "priority"),
    ({"vips": []}, "vips"),
    ({"vips": ["192.0.2.100"]}, "vips"),
    ({"vips": ["2001:db8::1/64"]}, "vips"),
    ({"advert_interval_s": 0.005}, "advert_interval_s"),
    ({"advert_interval_s": 41.0}, "advert_interval_s"),
    ({"advert_interval_s": 0.015}, "advert_interval_s"),
    ({"advert_interval_s": "1"}, "advert_interval_s"),
    ({"preempt": "yes"}, "preempt"),
    ({"unicast_peers": ["not-an-ip"]}, "unicast_peers"),
    ({"metrics_port": 70000}, "metrics_port"),
    ({"interfce": "eth0"}, "interfce"),
    ({"health": {"url": "ftp://x"}}, "health.url"),
    ({"health": {"url": "http://127.0.0.1/ready", "fall": 0}}, "health.fall"),
    ({"health": {"url": "http://127.0.0.1/ready", "timeout": 1}}, "health.timeout"),
    ({"notify_commands": [[]]}, "notify_commands"),
])
def test_bad_values_name_the_field(change, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        config_from_dict({**GOOD, **change})


def test_missing_required_field():
    with pytest.raises(ValueError, match="^priority:"):
        config_from_dict({k: v for k, v in GOOD.items() if k != "priority"})


def test_example_configs_load():
    a = load_config(REPO / "deploy" / "vrrp" / "host-a.toml")
    b = load_config(REPO / "deploy" / "vrrp" / "host-b.toml")
    assert a.priority > b.priority and a.vips == b.vips and a.vrid == b.vrid
    assert a.health is not None and a.health.weight < 0


def _cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "duet.cli", "vrrp", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=30)


@pytest.mark.parametrize("text, words", [
    ("[vrrp]\ninterface = 'eth0'\nvrid = 51\npriority = 300\nvips = ['192.0.2.1/24']\n",
     "priority"),
    ("[vrrp\n", "invalid TOML"),
    ("[other]\n", "[vrrp]"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, text, words):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    res = _cli("--config", str(cfg))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_missing_file_is_one_line(tmp_path):
    res = _cli("--config", str(tmp_path / "nope.toml"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_capability_check_parses_capeff():
    assert missing_capabilities("CapEff:\t000001ffffffffff\n") == []
    assert missing_capabilities("CapEff:\t0000000000000000\n") == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert missing_capabilities(f"CapEff:\t{1 << 12:016x}\n") == ["CAP_NET_RAW"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_without_capabilities_says_so_in_one_line(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text("[vrrp]\ninterface = 'lo'\nvrid = 51\npriority = 100\n"
                   "vips = ['192.0.2.1/24']\n")
    res = _cli("--config", str(cfg), prefix=("setpriv", "--bounding-set=-net_admin,-net_raw",
                                             "--inh-caps=-net_admin,-net_raw"))
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and "CAP_NET_ADMIN and CAP_NET_RAW" in res.stderr
