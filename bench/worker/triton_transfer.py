"""How the worker should hand a step's hidden states to the tail model inside Triton.

One managed tritonserver with a Python-backend model that parses a step the way the tail
does and answers a StepReply of one sampled token per sequence (no model compute), timed
from the worker's side, for decode steps of the 7B shape (hidden 3,584, bf16) at batch 1
and 64. Ways of passing the step, interleaved in rounds:

  inline   today's: the whole StepRequest, hidden bytes included, re-serialized as one BYTES
           input; the model parses it back (two extra copies of the hidden states)
  tensor   the StepRequest without its hidden bytes, plus the bytes as a UINT8 input that
           the model reads through DLPack
  shm      as tensor, but the bytes written into a system shared-memory region registered
           with Triton once (the request carries no tensor data)
  stream   as tensor, over one ModelStreamInfer stream instead of a unary call per step

CUDA shared memory is not measured: tritonclient's CUDA helpers need cuda-python, which
the GPU machines here do not have.

    python -m bench.worker.triton_transfer [--steps 300] [--rounds 3] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_grpc
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import InferInput, InferRequestedOutput

from proto import pipeline_pb2 as pb
from worker.triton_process import ManagedTriton
from worker.triton_repo import TritonInstall

HIDDEN, MODEL = 3584, "transfer"
MODES = ("inline", "tensor", "shm", "stream")
CONFIG = """name: "transfer"
backend: "python"
max_batch_size: 0
input [
  { name: "STEP" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "HIDDEN" data_type: TYPE_UINT8 dims: [ -1 ] optional: true }
]
output [ { name: "RESULT" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
MODEL_PY = '''
import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from proto import pipeline_pb2 as pb


class TritonPythonModel:
    def execute(self, requests):
        return [self.one(r) for r in requests]

    def one(self, r):
        step = pb.StepRequest.FromString(
            pb_utils.get_input_tensor_by_name(r, "STEP").as_numpy()[0])
        extra = pb_utils.get_input_tensor_by_name(r, "HIDDEN")
        if extra is None:  # inline: the bytes came inside the message
            hidden = torch.frombuffer(bytearray(step.hidden.data), dtype=torch.uint8)
        else:
            hidden = torch.from_dlpack(extra.to_dlpack())
        assert hidden.numel() == len(step.seqs) * 3584 * 2, hidden.numel()
        reply = pb.StepReply(step_id=step.step_id, results=[
            pb.SeqResult(seq_id=s.seq_id, sampled=pb.Sampled(token_id=1)) for s in step.seqs])
        out = pb_utils.Tensor("RESULT", np.array([reply.SerializeToString()], dtype=np.object_))
        return pb_utils.InferenceResponse(output_tensors=[out])
'''


def step_request(batch: int, step_id: int, data: bytes, inline: bool) -> pb.StepRequest:
    seqs = [pb.SeqStep(seq_id=f"s{i}", start_pos=100, num_tokens=1, sample=True)
            for i in range(batch)]
    hidden = pb.Tensor(data=data if inline else b"", dtype="bfloat16", shape=[batch, HIDDEN])
    return pb.StepRequest(step_id=step_id, seqs=seqs, hidden=hidden)


def inputs_for(mode: str, request: pb.StepRequest, data: bytes, region: str) -> list[InferInput]:
    step = InferInput("STEP", [1], "BYTES")
    step.set_data_from_numpy(np.array([request.SerializeToString()], dtype=np.object_))
    if mode == "inline":
        return [step]
    hidden = InferInput("HIDDEN", [len(data)], "UINT8")
    if mode == "shm":
        hidden.set_shared_memory(region, len(data))
    else:
        hidden.set_data_from_numpy(np.frombuffer(data, dtype=np.uint8))
    return [step, hidden]


class Transfer:
    """One client, one registered shm region, one open stream; `step(mode, batch)` times one."""

    def __init__(self, url: str):
        self.client = triton_grpc.InferenceServerClient(url)
        self.region = shm.create_shared_memory_region("duet_bench", "/duet_bench", 1 << 21)
        self.replies: asyncio.Queue = asyncio.Queue()
        self.requests: asyncio.Queue = asyncio.Queue()
        self.step_id = 0

    async def open(self) -> None:
        await self.client.register_system_shared_memory("duet_bench", "/duet_bench", 1 << 21)
        self.stream = self.client.stream_infer(self._requests())
        self.reader = asyncio.create_task(self._read())

    async def _requests(self):
        while True:
            yield await self.requests.get()

    async def _read(self):
        async for result, error in self.stream:
            self.replies.put_nowait((result, error))

    async def step(self, mode: str, batch: int, data: bytes) -> float:
        self.step_id += 1
        start = time.perf_counter()
        request = step_request(batch, self.step_id, data, mode == "inline")
        if mode == "shm":
            shm.set_shared_memory_region(self.region, [np.frombuffer(data, dtype=np.uint8)])
        inputs = inputs_for(mode, request, data, "duet_bench")
        outputs = [InferRequestedOutput("RESULT")]
        if mode == "stream":
            self.requests.put_nowait({"model_name": MODEL, "inputs": inputs, "outputs": outputs})
            result, error = await self.replies.get()
            assert error is None, error
        else:
            result = await self.client.infer(MODEL, inputs, outputs=outputs)
        reply = pb.StepReply.FromString(result.as_numpy("RESULT")[0])
        assert len(reply.results) == batch
        return time.perf_counter() - start

    async def close(self) -> None:
        self.stream.cancel()
        self.reader.cancel()
        await self.client.unregister_system_shared_memory("duet_bench")
        shm.destroy_shared_memory_region(self.region)
        await self.client.close()


async def measure(url: str, steps: int, rounds: int) -> dict:
    t = Transfer(url)
    await t.open()
    times: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            for batch in (1, 64):
                data = np.random.bytes(batch * HIDDEN * 2)
                for mode in MODES:
                    for _ in range(10):  # warm-up
                        await t.step(mode, batch, data)
                    key = f"{mode} batch {batch}"
                    times.setdefault(key, []).extend(
                        [await t.step(mode, batch, data) for _ in range(steps)])
    finally:
        await t.close()
    return {k: {"p50_us": statistics.median(v) * 1e6,
                "p90_us": statistics.quantiles(v, n=10)[8] * 1e6} for k, v in times.items()}


async def run(steps: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models" / MODEL
        (repo / "1").mkdir(parents=True)
        (repo / "config.pbtxt").write_text(CONFIG)
        (repo / "1" / "model.py").write_text(MODEL_PY)
        server = ManagedTriton(TritonInstall.find(), Path(tmp) / "models", Path(tmp), MODEL)
        await server.start()
        try:
            return await measure(server.url, steps, rounds)
        except Exception:
            print(server.log_tail(40), flush=True)  # why the stub failed, if it did
            raise
        finally:
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "steps": args.steps, "rounds": args.rounds,
               "times": asyncio.run(run(args.steps, args.rounds))}
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
