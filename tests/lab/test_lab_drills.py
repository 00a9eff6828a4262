"""`duet lab` end to end and every `duet drill` once, against real processes in namespaces:
host A (master + VRRP), host B (Triton worker + hot standby + VRRP), a client, the VIP."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duet.lab.services import log_tail
from duet.lab.topology import LabState

pytestmark = [pytest.mark.netns, pytest.mark.triton]
DRILLS = ("crash-a", "kill-master", "stop-a", "cut-a-link", "return-a", "kill-worker")


def duet(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duet.cli", *args], capture_output=True,
                          text=True, timeout=timeout_s)


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if text.encode() in cmdline and "State:\tZ" not in status:
            found.append(int(pid))
    return found


def lab_evidence(run_dir: Path) -> str:
    """`duet lab status` and the end of every service's log: what a failure is read from."""
    state = LabState.load(run_dir)
    return "\n".join([duet("lab", "status", "--dir", str(run_dir)).stdout]
                     + [f"--- {name}\n{log_tail(state, name, 40)}" for name in state.services])


def assert_nothing_left(run_dir: Path, prefix: str) -> None:
    assert namespaces(prefix) == [], "namespaces left behind"
    assert not run_dir.exists(), "run directory left behind"
    assert processes_mentioning(str(run_dir)) == [], "processes left behind"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("openssl") is None:
        pytest.skip("the lab needs root, iproute2 and the openssl CLI")
    pytest.importorskip("pytriton")
    run_dir = tmp_path_factory.mktemp("lab") / "run"
    prefix = f"dl{os.getpid() % 100000}"
    up = duet("lab", "up", "--dir", str(run_dir), "--prefix", prefix)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield run_dir, prefix, up.stdout
    finally:
        duet("lab", "down", "--dir", str(run_dir), "--prefix", prefix)


def test_up_prints_addresses_and_a_curl_line_that_works(lab):
    run_dir, prefix, out = lab
    assert "VIP 10.99.0.100" in out
    curl = next(line.strip() for line in out.splitlines() if "curl" in line)
    assert curl.startswith(f"ip netns exec {prefix}-c curl")
    if shutil.which("curl"):
        try:
            answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60)
            assert json.loads(answer.stdout)["choices"][0]["message"]["content"]
        except (subprocess.TimeoutExpired, ValueError, KeyError, AssertionError) as e:
            pytest.fail(f"{curl}: {e!r}\n{lab_evidence(run_dir)}")


def test_status_shows_processes_vrrp_states_and_the_vip_holder(lab):
    run_dir, _, _ = lab
    res = duet("lab", "status", "--dir", str(run_dir), "--json")
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["healthy"] and report["vip_holders"] == ["a"]
    procs = report["processes"]
    assert set(procs) == {"worker", "master", "standby", "vrrp-a", "vrrp-b"}
    assert all(p["alive"] for p in procs.values())
    assert (procs["vrrp-a"]["state"], procs["vrrp-b"]["state"]) == ("MASTER", "BACKUP")
    assert procs["standby"]["ready"] and "not active" in procs["standby"]["reason"]
    text = duet("lab", "status", "--dir", str(run_dir)).stdout
    assert "VIP 10.99.0.100 held by: a" in text and "vrrp-b" in text


def served_by_standby(run_dir: Path) -> int:
    log = (run_dir / "standby.log").read_text(errors="replace")
    return len(re.findall(r'"POST /v1/completions" status=200', log))


@pytest.mark.parametrize("scenario", DRILLS)
def test_drill(lab, scenario, tmp_path):
    run_dir, _, _ = lab
    before = served_by_standby(run_dir)
    report_file = tmp_path / "report.json"
    res = duet("drill", scenario, "--lab-dir", str(run_dir), "--clients", "2",
               "--settle-s", "0.3", "--json", str(report_file))
    assert report_file.exists(), res.stdout + res.stderr
    report = json.loads(report_file.read_text())
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert res.returncode == 0 and report["ok"], f"{failed}\n{res.stdout}{res.stderr}"
    assert "drill passed" in res.stdout and "first success via VIP" in res.stdout
    assert report["first_success_s"] is not None and report["requests"]["succeeded"] > 0
    assert report["final"]["vip_holders"] == ["a"] and report["longest_two_holders_s"] < 0.3
    if scenario in ("crash-a", "kill-master", "stop-a", "cut-a-link"):
        assert report["vip_moved_s"] < 5 and report["vip_back_s"] is not None
        assert served_by_standby(run_dir) > before, "the standby on B served through the VIP"
    if scenario == "kill-worker":  # a pause, then the same text: nothing to retry
        across = report["across_fault"]
        assert across["streams"] == across["identical"] > 0 and across["pause_s"] > 0


def test_drill_crash_a_with_resuming_clients(lab, tmp_path):
    """Streams in flight when host A crashes complete through B with the identical text."""
    run_dir, _, _ = lab
    report_file = tmp_path / "report.json"
    res = duet("drill", "crash-a-resume", "--lab-dir", str(run_dir), "--clients", "2",
               "--max-tokens", "60", "--json", str(report_file))
    assert report_file.exists(), res.stdout + res.stderr
    report = json.loads(report_file.read_text())
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert res.returncode == 0 and report["ok"], f"{failed}\n{res.stdout}{res.stderr}"
    assert report["completed"] == report["identical"] == 2
    assert report["final"]["vip_holders"] == ["a"]


def test_down_leaves_nothing_behind(lab):
    run_dir, prefix, _ = lab
    res = duet("lab", "down", "--dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert_nothing_left(run_dir, prefix)


def test_down_cleans_up_after_up_crashed_half_way(tmp_path):
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("openssl") is None:
        pytest.skip("the lab needs root, iproute2 and the openssl CLI")
    run_dir, prefix = tmp_path / "run", f"dk{os.getpid() % 100000}"
    up = subprocess.Popen([sys.executable, "-m", "duet.cli", "lab", "up", "--dir", str(run_dir),
                           "--prefix", prefix, "--executor", "local"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "lab.json").exists() or '"pid": 0' in (
                run_dir / "lab.json").read_text() or len(namespaces(prefix)) < 4:
            assert up.poll() is None and time.monotonic() < deadline, "up never got going"
            time.sleep(0.1)
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait()
    assert namespaces(prefix) and processes_mentioning(str(run_dir))
    res = duet("lab", "down", "--dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert_nothing_left(run_dir, prefix)
