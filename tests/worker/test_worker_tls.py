"""TLS and mutual TLS on the pipeline channel (certificates: the tls_certs fixture)."""
import pytest

from engine.fingerprint import checkpoint_fingerprint
from master.generation import PipelineUnavailable
from master.pipeline_client import HeadIdentity, PipelineClient, PipelineClientConfig
from pipeline_driver import SPLIT
from worker.config import WorkerConfig
from worker.main import Worker

@pytest.fixture(params=["tls", "mtls"])
async def tls_worker(request, ckpt, tls_certs):
    config = WorkerConfig(
        model_dir=str(ckpt), layer_start=SPLIT, dtype="float32", executor="local",
        kv_cache_bytes=1 << 20, listen="127.0.0.1:0", tls_cert_file=str(tls_certs / "server.pem"),
        tls_key_file=str(tls_certs / "server.key"),
        tls_client_ca_file=str(tls_certs / "ca.pem") if request.param == "mtls" else "",
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


async def test_client_with_certificate_connects(tls_worker, ckpt, tls_certs):
    await connect(tls_worker, ckpt, tls_ca_file=str(tls_certs / "ca.pem"),
                  tls_cert_file=str(tls_certs / "client.pem"), tls_key_file=str(tls_certs / "client.key"))


async def test_plaintext_client_is_refused(tls_worker, ckpt):
    with pytest.raises(PipelineUnavailable, match="unreachable"):
        await connect(tls_worker, ckpt)


async def test_client_without_certificate(tls_worker, ckpt, tls_certs):
    """Plain TLS lets it in; mutual TLS refuses it."""
    mutual = bool(tls_worker.config.tls_client_ca_file)
    if mutual:
        with pytest.raises(PipelineUnavailable, match="unreachable"):
            await connect(tls_worker, ckpt, tls_ca_file=str(tls_certs / "ca.pem"))
    else:
        await connect(tls_worker, ckpt, tls_ca_file=str(tls_certs / "ca.pem"))
