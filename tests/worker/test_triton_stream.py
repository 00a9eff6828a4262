"""The worker's calls into Triton as Triton's own messages, over one stream (a stand-in
Triton here; the real one runs in the `triton`-marked tests): what the tail model receives,
answers kept with their calls, and a broken or abandoned stream failing cleanly."""
import asyncio
import re

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from worker.triton_stream import StreamBroken, TritonStream
from worker.triton_wire import CallTemplate, MalformedReply, one_bytes_element, result_bytes


def test_a_step_call_carries_its_four_inputs():
    request = CallTemplate("duet_tail").request("step", "s-1", b"\x08\x07", b"\x01\x02\x03")
    assert request.model_name == "duet_tail"
    assert [(i.name, i.datatype, list(i.shape)) for i in request.inputs] == [
        ("OP", "BYTES", [1]), ("STREAM", "BYTES", [1]), ("STEP", "BYTES", [1]),
        ("HIDDEN", "UINT8", [3])]
    assert [o.name for o in request.outputs] == ["RESULT"]
    assert list(request.raw_input_contents) == [
        b"\x04\x00\x00\x00step", b"\x03\x00\x00\x00s-1", b"\x02\x00\x00\x00\x08\x07",
        b"\x01\x02\x03"]


def test_a_call_without_hidden_states_has_no_hidden_input():
    template = CallTemplate("duet_tail")
    template.request("step", "s-1", b"x", b"\x01" * 10)  # the template is not changed by it
    request = template.request("drop_stream", "s-1", b"")
    assert [i.name for i in request.inputs] == ["OP", "STREAM", "STEP"]
    assert list(request.raw_input_contents)[2] == b"\x00\x00\x00\x00"


def reply(*raw: bytes) -> service_pb2.ModelInferResponse:
    return service_pb2.ModelInferResponse(raw_output_contents=list(raw))


def test_the_result_is_read_out_of_its_bytes_element():
    assert result_bytes(reply(one_bytes_element(b"step reply"))) == b"step reply"
    assert result_bytes(reply(one_bytes_element(b""))) == b""


@pytest.mark.parametrize("response, why", [
    (reply(), "0 raw outputs"),
    (reply(b"\x01\x00\x00\x00a", b"\x01\x00\x00\x00b"), "2 raw outputs"),
    (reply(b"\x09\x00\x00\x00short"), "not one BYTES element (9 bytes)"),
    (reply(b"ab"), "not one BYTES element (2 bytes)"),
])
def test_an_answer_that_is_not_one_result_is_refused(response, why):
    with pytest.raises(MalformedReply, match=re.escape(why)):
        result_bytes(response)


class StandInTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers each call with its STEP input after `delay_s`; a STEP of b"close" ends the
    stream instead."""

    def __init__(self):
        self.delay_s = 0.0

    async def ModelStreamInfer(self, requests, context):
        async for request in requests:
            step = request.raw_input_contents[2]
            if step.endswith(b"close"):
                return
            await asyncio.sleep(self.delay_s)
            answer = service_pb2.ModelInferResponse(raw_output_contents=[step])
            yield service_pb2.ModelStreamInferResponse(infer_response=answer)


@pytest.fixture
async def triton():
    server = grpc.aio.server()
    servicer = StandInTriton()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, channel
    await server.stop(0)


async def ask(stream: TritonStream, text: bytes) -> bytes:
    request = CallTemplate("m").request("step", "s", text)
    return result_bytes((await stream.call(request)).infer_response)


async def test_calls_from_many_steps_get_their_own_answers(triton):
    _, channel = triton
    stream = TritonStream(channel)
    texts = [f"step {i}".encode() for i in range(20)]
    assert await asyncio.gather(*(ask(stream, t) for t in texts)) == texts


async def test_an_abandoned_call_breaks_the_stream_instead_of_answering_the_next(triton):
    servicer, channel = triton
    stream = TritonStream(channel)
    servicer.delay_s = 0.3
    slow = asyncio.ensure_future(ask(stream, b"abandoned"))
    await asyncio.sleep(0.1)
    slow.cancel()
    with pytest.raises(StreamBroken, match="abandoned half way"):
        await ask(stream, b"next")
    servicer.delay_s = 0.0
    assert await ask(TritonStream(channel), b"next") == b"next"  # a new stream serves


async def test_triton_ending_the_stream_fails_the_call(triton):
    _, channel = triton
    stream = TritonStream(channel)
    with pytest.raises(StreamBroken, match="Triton closed the stream"):
        await ask(stream, b"close")
    with pytest.raises(StreamBroken):
        await ask(stream, b"later")
