"""Fixtures more than one test area needs."""
import shutil
import subprocess
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
