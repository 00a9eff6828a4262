"""TLS and mutual TLS on the pipeline channel (certificates: the tls_certs fixture)."""
import grpc
import pytest

from engine.fingerprint import checkpoint_fingerprint
from master.generation import PipelineUnavailable
from master.pipeline_client import HeadIdentity, PipelineClient, PipelineClientConfig
from pipeline_driver import SPLIT
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc
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


def channel_credentials(certs, cert: str | None) -> grpc.ChannelCredentials:
    chain = key = None
    if cert:
        chain, key = (certs / f"{cert}.pem").read_bytes(), (certs / f"{cert}.key").read_bytes()
    return grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(), key, chain)


async def handshake(worker: Worker, certs, cert: str | None) -> pb.HandshakeReply:
    creds = channel_credentials(certs, cert)
    async with grpc.aio.secure_channel(f"127.0.0.1:{worker.port}", creds) as channel:
        return await pb_grpc.PipelineStub(channel).Handshake(pb.HandshakeRequest(), timeout=5)


async def test_mutual_tls_refuses_a_client_certificate_from_another_ca(tls_worker, tls_certs):
    if not tls_worker.config.tls_client_ca_file:
        pytest.skip("plain TLS does not ask for a client certificate")
    assert (await handshake(tls_worker, tls_certs, "client")).layer_start == SPLIT
    with pytest.raises(grpc.aio.AioRpcError) as e:  # same CN, wrong issuer
        await handshake(tls_worker, tls_certs, "stranger")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def named_worker(ckpt, tls_certs):
    """Mutual TLS that lets in only the certificate named duet-client."""
    config = WorkerConfig(
        model_dir=str(ckpt), layer_start=SPLIT, dtype="float32", executor="local",
        kv_cache_bytes=1 << 20, listen="127.0.0.1:0", tls_cert_file=str(tls_certs / "server.pem"),
        tls_key_file=str(tls_certs / "server.key"), tls_client_ca_file=str(tls_certs / "ca.pem"),
        tls_client_names=("duet-client", "standby.internal"))
    worker = Worker(config)
    await worker.start()
    yield worker
    await worker.stop(grace_s=0)


async def test_a_name_not_on_the_list_is_refused(named_worker, tls_certs, caplog):
    assert (await handshake(named_worker, tls_certs, "client")).layer_start == SPLIT
    with pytest.raises(grpc.aio.AioRpcError) as e:  # the CA signed it, but not that name
        await handshake(named_worker, tls_certs, "other-client")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    creds = channel_credentials(tls_certs, "other-client")
    async with grpc.aio.secure_channel(f"127.0.0.1:{named_worker.port}", creds) as channel:
        step = pb_grpc.PipelineStub(channel).Step()
        await step.write(pb.StepRequest(step_id=1))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await step.read()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "duet-other-client" in caplog.text and "not in tls_client_names" in caplog.text
