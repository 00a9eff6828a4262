"""Fixtures more than one test area needs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and client certificates, made with the openssl
    CLI: ca.pem, server.pem/.key, client.pem/.key (CN duet-client), other-client.pem/.key
    (CN duet-other-client, same CA), and stranger.pem/.key (CN duet-client, from another CA,
    other-ca.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    d = tmp_path_factory.mktemp("certs")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 f"/CN=duet-test-{ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=d)
    client = "extendedKeyUsage=clientAuth"
    for name, cn, ext, ca in (
            ("server", "duet-server", "subjectAltName=IP:127.0.0.1,DNS:localhost", "ca"),
            ("client", "duet-client", client, "ca"),
            ("other-client", "duet-other-client", client, "ca"),
            ("stranger", "duet-client", client, "other-ca")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem", cwd=d)
    return d


class NotifyListener:
    """systemd's side of sd_notify(3): a datagram socket collecting (monotonic time, line)."""

    def __init__(self, path: Path):
        import socket
        import threading

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except OSError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def env(self, watchdog_s: float) -> dict:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(int(watchdog_s * 1e6))}

    def wait_for(self, line: str, count: int = 1, timeout_s: float = 180.0) -> list[float]:
        """Times of the first `count` occurrences of `line`; fails after timeout_s."""
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            times = [t for t, got in list(self.messages) if got == line]
            if len(times) >= count:
                return times[:count]
            time.sleep(0.05)
        raise AssertionError(f"{count}x {line!r} not received in {timeout_s} s: "
                             f"{self.messages[-10:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_listener(tmp_path):
    """A NOTIFY_SOCKET for a service under test (what systemd gives a Type=notify unit)."""
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    """One tiny 4-layer qwen2 checkpoint (seed 0) for every test that only reads it."""
    from engine.tiny_model import write_tiny_model

    return write_tiny_model("qwen2", tmp_path_factory.mktemp("tiny") / "tiny-qwen2",
                            num_layers=4)


# `duet ARGS` in a Python where `import torch` raises: a command that must answer before torch
# loads (a bad config: one line, exit 2) shows a traceback instead if anything imports it.
_DUET_WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; "
                       "from duet.cli import main; sys.exit(main())")


@pytest.fixture(scope="session")
def duet_without_torch():
    """duet_without_torch(*args, env={}) -> CompletedProcess of `duet ARGS` with torch blocked."""
    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _DUET_WITHOUT_TORCH, *args],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, **(env or {})})
    return run
