"""SIGTERM stops `duet worker` in order: streams released, executor closed, exit 0, no traceback."""
import asyncio
import signal

import grpc

from pipeline_driver import StepStream, WorkerProcess, worker_fields
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
