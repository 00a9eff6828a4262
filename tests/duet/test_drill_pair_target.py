"""`duet drill` against a real pair: which command reaches which host (ssh stands in)."""
import os
import stat
import subprocess
import sys

import pytest

from duet.drill.pair_target import Pair, PairTarget

FAKE_SSH = """#!/bin/sh
# Records "<destination> <command>" and answers the agents' status files as the hosts would.
for last; do :; done
for arg; do case "$arg" in *@*) dest="$arg";; esac; done
echo "$dest $last" >> "$SSH_LOG"
case "$last" in
  *vrrp-51.json*) [ "$dest" = "root@host-a" ] && echo '{"state": "MASTER"}' \\
                  || echo '{"state": "BACKUP"}';;
esac
"""


@pytest.fixture
def target(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SSH_LOG", str(tmp_path / "ssh.log"))
    pair = Pair("root@host-a", "root@host-b", "192.0.2.100", "http://host-a:8000",
                "http://host-b:8000", "m", interface="ens3", ssh_prefix="sudo -n")
    t = PairTarget(pair)
    t.log = tmp_path / "ssh.log"
    return t


def calls(target) -> list[str]:
    return target.log.read_text().splitlines() if target.log.exists() else []


def test_faults_and_repairs_reach_the_right_host_as_systemctl(target):
    target.kill("master")
    target.kill("worker")
    target.crash("a")
    target.stop_host("a")
    target.start_dead("a")
    target.cut("a")
    assert calls(target) == [
        "root@host-a sudo -n systemctl kill -s KILL duet-master",
        "root@host-b sudo -n systemctl kill -s KILL duet-worker",
        "root@host-a sudo -n systemctl kill -s KILL duet-master duet-vrrp",
        "root@host-a sudo -n systemctl stop duet-vrrp duet-master",
        "root@host-a sudo -n systemctl start duet-master duet-vrrp",
        "root@host-a sudo -n systemd-run --collect sh -c 'ip link set ens3 down; sleep 10.0; "
        "ip link set ens3 up'",
    ]


def test_the_vip_holder_comes_from_the_running_agents_status(target):
    assert target.holders() == ["a"]
    assert all("systemctl is-active -q duet-vrrp && cat /run/duet-vrrp/vrrp-51.json" in c
               for c in calls(target))


def test_the_cli_wants_the_whole_pair():
    res = subprocess.run([sys.executable, "-m", "duet.cli", "drill", "crash-a", "--host-a",
                          "root@a"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--host-b: required for a real pair" in res.stderr
