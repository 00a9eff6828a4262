"""deploy/systemd: the units pass `systemd-analyze verify`, are hardened, and the real
services speak sd_notify (READY=1, then WATCHDOG=1 at half of WatchdogSec)."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from engine.tiny_model import write_tiny_model
from runtime.children import free_port

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
NAMES = ("duet-master", "duet-standby", "duet-worker", "duet-vrrp")
WATCHDOG_S = 2.0  # pings every 1 s; real units use 30 s (5 s for VRRP)


def systemd_analyze() -> str:
    """The systemd-analyze binary, installed with apt-get (Debian CI as root) if missing."""
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed and cannot be installed here")
    return found


def directives(name: str) -> dict[str, str]:
    """key -> value of a unit file (a repeated key keeps its last value)."""
    out = {}
    for line in (UNITS / f"{name}.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = systemd_analyze()
    duet = Path(sys.prefix) / "bin" / "duet"  # ExecStart must name an executable that exists
    assert duet.is_file()
    for name in NAMES:
        text = (UNITS / f"{name}.service").read_text()
        assert "/opt/duet/.venv/bin/duet " in text
        (tmp_path / f"{name}.service").write_text(text.replace("/opt/duet/.venv/bin/duet",
                                                               str(duet)))
    res = subprocess.run([analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                         capture_output=True, text=True, timeout=120)
    # verify exits 0 even for unknown keys or bad values; any line it prints is a defect.
    problems = [line for line in (res.stdout + res.stderr).splitlines()
                if str(tmp_path) in line or "Unknown" in line or "Failed" in line]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


@pytest.mark.parametrize("name", NAMES)
def test_units_are_notify_watchdog_restart_and_hardened(name):
    d = directives(name)
    assert d["Type"] == "notify" and float(d["WatchdogSec"]) > 0
    assert d["Restart"] in ("on-failure", "always")
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert d[key] == "yes", key
    assert d["ProtectSystem"] == "strict"
    if name == "duet-vrrp":  # the only privileged one, as a user of its own
        assert d["User"] == "duet-vrrp"
        assert set(d["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
        assert set(d["AmbientCapabilities"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    else:
        assert d["User"] == "duet" and d["CapabilityBoundingSet"] == ""
        assert re.fullmatch(r"-?/etc/duet/\w+\.env", d["EnvironmentFile"])


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env={**os.environ, **env}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def check_ready_then_watchdog(listener, proc: subprocess.Popen, log: Path) -> None:
    try:
        ready = listener.wait_for("READY=1")[0]
        before = len([t for t, line in listener.messages if line == "WATCHDOG=1" and t < ready])
        pings = listener.wait_for("WATCHDOG=1", count=before + 3, timeout_s=30)
        assert pings[0] <= ready + WATCHDOG_S, "the watchdog is fed while loading, too"
        assert proc.poll() is None
        # Once serving, the loop is idle: the pings come every WatchdogSec / 2. (While loading,
        # the tokenizer can hold the GIL for a second on a busy 2-core machine.)
        serving = [t for t in pings if t >= ready]
        gaps = [b - a for a, b in zip(serving, serving[1:])]
        assert max(gaps) < WATCHDOG_S, f"a watchdog gap reached WatchdogSec: {gaps}"
    except AssertionError:
        print(log.read_text(errors="replace"))
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model("qwen2", tmp_path_factory.mktemp("units") / "tiny-qwen2",
                            num_layers=2)


def test_master_says_ready_once_listening_and_feeds_the_watchdog(tmp_path, tiny,
                                                                 notify_listener):
    config = tmp_path / "master.toml"
    config.write_text(f'model_dir = "{tiny}"\nport = 0\nhead_layer_end = 1\n'
                      f'worker_address = "127.0.0.1:9"\nkv_cache_bytes = 8388608\n')
    log = tmp_path / "master.log"
    proc = start([sys.executable, "-m", "duet.cli", "master", "--config", str(config)],
                 notify_listener.env(WATCHDOG_S), log)
    check_ready_then_watchdog(notify_listener, proc, log)
    assert "duet master: serving" in log.read_text()


def test_worker_says_ready_once_serving_and_feeds_the_watchdog(tmp_path, tiny,
                                                               notify_listener):
    config = tmp_path / "worker.toml"
    metrics_port = free_port()
    config.write_text(f'model_dir = "{tiny}"\nlayer_start = 1\nexecutor = "local"\n'
                      f'listen = "127.0.0.1:0"\nkv_cache_bytes = 8388608\ndtype = "float32"\n'
                      f'metrics_listen = "127.0.0.1:{metrics_port}"\n')
    log = tmp_path / "worker.log"
    proc = start([sys.executable, "-m", "duet.cli", "worker", "--config", str(config)],
                 notify_listener.env(WATCHDOG_S), log)
    notify_listener.wait_for("READY=1")
    # READY means serving: the worker's own metrics say so too (what the dashboard reads).
    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert "duet_worker_serving 1.0" in scrape and "duet_worker_kv_capacity_tokens" in scrape
    check_ready_then_watchdog(notify_listener, proc, log)
    assert "worker ready" in log.read_text()
