"""`duet master` talks to a mutual-TLS worker with the certificates its config names."""
import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from e2e_harness import start_master, start_worker, wait_not_ready, wait_ready
from engine.tiny_model import write_tiny_model

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
SPLIT = 2


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=duet-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=duet-{name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=d)
    return d


def test_master_serves_over_mutual_tls_and_a_plaintext_master_is_refused(tmp_path):
    certs = make_certs(tmp_path / "certs")
    model = write_tiny_model("qwen2", tmp_path / "tiny-qwen2", num_layers=4)
    worker, port = start_worker(tmp_path, model, SPLIT, tls_cert_file=str(certs / "server.pem"),
                                tls_key_file=str(certs / "server.key"),
                                tls_client_ca_file=str(certs / "ca.pem"))
    services = [worker]
    try:
        master, url = start_master(tmp_path, model, SPLIT, port,
                                   tls_ca_file=str(certs / "ca.pem"),
                                   tls_cert_file=str(certs / "client.pem"),
                                   tls_key_file=str(certs / "client.key"))
        services.append(master)
        wait_ready(url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        r = client.completions.create(model=model.name, prompt="secure", max_tokens=3)
        assert r.usage.completion_tokens == 3

        plain, plain_url = start_master(tmp_path, model, SPLIT, port, name="plaintext")
        services.append(plain)
        assert "unreachable" in wait_not_ready(plain_url, "unreachable")
    finally:
        for service in reversed(services):
            service.stop()
