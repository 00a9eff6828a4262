"""TLS and mutual TLS on the pipeline channel, with certificates made by the openssl CLI."""
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.fingerprint import checkpoint_fingerprint
from master.generation import PipelineUnavailable
from master.pipeline_client import HeadIdentity, PipelineClient, PipelineClientConfig
from pipeline_driver import SPLIT
from worker.config import WorkerConfig
from worker.main import Worker

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=duet-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=duet-{name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=d)
    return d


@pytest.fixture(params=["tls", "mtls"])
async def tls_worker(request, ckpt, certs):
    config = WorkerConfig(
        model_dir=str(ckpt), layer_start=SPLIT, dtype="float32", executor="local",
        kv_cache_bytes=1 << 20, listen="127.0.0.1:0", tls_cert_file=str(certs / "server.pem"),
        tls_key_file=str(certs / "server.key"),
        tls_client_ca_file=str(certs / "ca.pem") if request.param == "mtls" else "",
    )
    worker = Worker(config)
    await worker.start()
    yield worker
    await worker.stop(grace_s=0)


async def connect(worker: Worker, ckpt, **tls) -> None:
    identity = HeadIdentity(checkpoint_fingerprint(ckpt), SPLIT, "float32", 64)
    config = PipelineClientConfig(f"127.0.0.1:{worker.port}", connect_timeout_s=3, **tls)
    client = PipelineClient(config, identity)
    try:
        stream = await client.connect()
        stream.cancel()
    finally:
        await client.close()


async def test_client_with_certificate_connects(tls_worker, ckpt, certs):
    await connect(tls_worker, ckpt, tls_ca_file=str(certs / "ca.pem"),
                  tls_cert_file=str(certs / "client.pem"), tls_key_file=str(certs / "client.key"))


async def test_plaintext_client_is_refused(tls_worker, ckpt):
    with pytest.raises(PipelineUnavailable, match="unreachable"):
        await connect(tls_worker, ckpt)


async def test_client_without_certificate(tls_worker, ckpt, certs):
    """Plain TLS lets it in; mutual TLS refuses it."""
    mutual = bool(tls_worker.config.tls_client_ca_file)
    if mutual:
        with pytest.raises(PipelineUnavailable, match="unreachable"):
            await connect(tls_worker, ckpt, tls_ca_file=str(certs / "ca.pem"))
    else:
        await connect(tls_worker, ckpt, tls_ca_file=str(certs / "ca.pem"))
