"""SIGTERM stops `duet worker` in order: the APIs are asked to pause (drain), streams released,
executor closed, exit 0, no traceback."""
import asyncio
import signal

import grpc
import pytest

from pipeline_driver import StepStream, WorkerProcess, result_of, worker_fields
from proto import pipeline_pb2 as pb

GREEDY = pb.SamplingParams(temperature=0)


async def test_sigterm_with_a_stream_open_exits_cleanly(ckpt, head, tmp_path):
    worker = WorkerProcess(tmp_path, worker_fields(ckpt, "local"))
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stream = StepStream(channel)
            seq = pb.SeqStep(seq_id="held", start_pos=0, num_tokens=4, sample=True, params=GREEDY)
            reply = await stream.step([seq], head.hidden([("held", 0, [1, 2, 3, 4])]))
            head.release("held")
            assert reply.results[0].WhichOneof("outcome") == "sampled"
            worker.proc.send_signal(signal.SIGTERM)
            worker.proc.send_signal(signal.SIGTERM)  # an impatient operator: still one clean stop
            code = await asyncio.to_thread(worker.proc.wait, 30)
    finally:
        worker.stop()
    log = worker.log()
    assert code == 0, log
    assert "Traceback" not in log and "failed" not in log, log
    released, stopped = log.find("its sequences are released"), log.find("worker stopped")
    assert 0 <= released < stopped, log


async def test_sigterm_asks_the_stream_to_pause_answers_what_was_sent_then_exits(ckpt, head,
                                                                                tmp_path):
    """Drain: a StepReply with only `drain` (step 0), the step written meanwhile still
    answered, new streams refused; the worker exits as soon as the API closes its stream."""
    worker = WorkerProcess(tmp_path, worker_fields(ckpt, "local"))
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stream = StepStream(channel)
            seq = pb.SeqStep(seq_id="s", start_pos=0, num_tokens=4, sample=True, params=GREEDY)
            await stream.step([seq], head.hidden([("s", 0, [1, 2, 3, 4])]))
            worker.proc.send_signal(signal.SIGTERM)
            notice = await stream.call.read()
            assert notice.step_id == 0 and notice.HasField("drain") and not notice.results
            assert "SIGTERM" in notice.drain.reason and notice.drain.startup_s > 0
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # no new stream meanwhile
                await StepStream(channel).step([], None)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            token = result_of(await stream.step(  # sent before the API read the notice
                [pb.SeqStep(seq_id="s", start_pos=4, num_tokens=1, sample=True)],
                head.hidden([("s", 4, [5])])), "s")
            head.release("s")
            assert token.WhichOneof("outcome") == "sampled"
            await stream.call.done_writing()
            code = await asyncio.to_thread(worker.proc.wait, 8)  # not drain_timeout_s (10 s)
    finally:
        worker.stop()
    assert code == 0 and "streams still open are cut" not in worker.log(), worker.log()
