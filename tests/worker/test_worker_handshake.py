"""The master's real pipeline client against a real worker: a matching head connects, any
difference in checkpoint, split point, dtype or width is refused with what differs."""
import grpc
import pytest

from engine.fingerprint import checkpoint_fingerprint
from master.generation import PipelineUnavailable
from master.pipeline_client import HeadIdentity, PipelineClient, PipelineClientConfig
from pipeline_driver import NUM_LAYERS, SPLIT
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc


def identity(ckpt, **changes) -> HeadIdentity:
    fields = dict(fingerprint=checkpoint_fingerprint(ckpt), split_layer=SPLIT, dtype="float32",
                  hidden_size=64)
    fields.update(changes)
    return HeadIdentity(**fields)


async def test_handshake_reports_the_tail(worker, ckpt):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        reply = await pb_grpc.PipelineStub(channel).Handshake(pb.HandshakeRequest())
    assert (reply.layer_start, reply.layer_end, reply.num_layers) == (SPLIT, NUM_LAYERS, NUM_LAYERS)
    assert reply.fingerprint == checkpoint_fingerprint(ckpt)
    assert (reply.dtype, reply.hidden_size) == ("float32", 64)
    assert reply.executor == worker.executor and reply.kv_capacity_tokens > 0
    assert 0 < reply.stream_kv_tokens <= reply.kv_capacity_tokens and reply.stream_max_seqs > 0
    assert reply.max_message_bytes > 0


async def test_matching_head_connects(worker, ckpt):
    client = PipelineClient(PipelineClientConfig(worker.address, client_name="test"),
                            identity(ckpt))
    stream = await client.connect()
    assert client.readiness() == (True, "ready")
    stream.cancel()
    await client.close()


@pytest.mark.parametrize("changes, reason", [
    (dict(split_layer=3), "split_layer: expected 3, got 2"),
    (dict(dtype="bfloat16"), "dtype: expected 'bfloat16', got 'float32'"),
    (dict(hidden_size=128), "hidden_size: expected 128, got 64"),
    (dict(fingerprint="0" * 64), "fingerprint: expected '0000"),
])
async def test_mismatch_is_refused_with_the_reason(worker, ckpt, changes, reason):
    client = PipelineClient(PipelineClientConfig(worker.address), identity(ckpt, **changes))
    with pytest.raises(PipelineUnavailable, match="refused by handshake") as e:
        await client.connect()
    assert reason in str(e.value)
    await client.close()
    assert "does not match this worker" in worker.log()
