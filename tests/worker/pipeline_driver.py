"""A test client for the worker: runs the head stage itself and drives a real Step stream."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import torch

from engine.batch import SeqChunk, StepBatch
from engine.config import ModelConfig
from engine.sampler import SamplerState, sample
from engine.sampling_params import SamplingParams
from engine.stage import Stage
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc
from proto.convert import params_to_proto, tensor_to_proto
from runtime.children import free_port
from worker.triton_process import SHM_PREFIX
from worker.triton_repo import TritonInstall, TritonNotInstalled

SPLIT = 2  # the head runs layers [0, 2), the worker [2, 4)
NUM_LAYERS = 4
IDLE_TIMEOUT_S = 3.0  # of the test workers
KV_CACHE_BYTES = 256 * 1024  # 2 layers x 256 B per token in fp32: 512 tokens
MAX_MESSAGE_BYTES = 1 << 20  # small, so an oversized message is cheap to send
# Intra-op threads of the test workers and of this test process (tests/worker/conftest.py):
# seeded sampling is compared bit for bit, and a reduction split over two threads rounds
# differently from one (on an AMD EPYC, two threads sampled other tokens than one).
TORCH_THREADS = 1
Generated = dict[str, list[tuple[int, float]]]  # seq_id -> [(token id, logprob)]


class StepStream:
    """One Step stream to a worker; step ids count up from 1."""

    def __init__(self, channel: grpc.aio.Channel):
        self.call = pb_grpc.PipelineStub(channel).Step()
        self.step_id = 0

    async def send(self, request: pb.StepRequest) -> pb.StepReply:
        await self.call.write(request)
        return await self.call.read()

    async def step(self, seqs: list[pb.SeqStep], hidden: torch.Tensor | None,
                   release: tuple[str, ...] = ()) -> pb.StepReply:
        self.step_id += 1
        request = pb.StepRequest(step_id=self.step_id, seqs=seqs, release=release)
        if hidden is not None:
            request.hidden.CopyFrom(tensor_to_proto(hidden))
        return await self.send(request)

    def cancel(self) -> None:
        self.call.cancel()


def result_of(reply: pb.StepReply, seq_id: str) -> pb.SeqResult:
    return next(r for r in reply.results if r.seq_id == seq_id)


class Head:
    """The API's half of the model, in the test: embedding + layers [0, k)."""

    def __init__(self, model_dir: Path, split: int, dtype: str = "float32"):
        self.stage = Stage.load(model_dir, 0, split, dtype=dtype, kv_cache_bytes=8 << 20)
        self.hidden_size = self.stage.config.hidden_size

    def hidden(self, chunks: list[tuple[str, int, list[int]]]) -> torch.Tensor:
        """(seq_id, start_pos, token ids) per sequence -> hidden [T, H] for the worker."""
        batch = StepBatch(tuple(SeqChunk(s, p, len(t)) for s, p, t in chunks))
        ids = torch.tensor([t for _, _, tokens in chunks for t in tokens], dtype=torch.long)
        return self.stage.forward(batch, ids)

    def release(self, seq_id: str) -> None:
        self.stage.release(seq_id)


async def generate(stream: StepStream, head: Head, prompts: dict[str, list[int]],
                   params: SamplingParams, new_tokens: int) -> Generated:
    """Prefill every prompt in one step, then decode all sequences together."""
    out: Generated = {s: [] for s in prompts}
    pos = {s: 0 for s in prompts}
    feed = dict(prompts)
    for step in range(new_tokens):
        chunks = [(s, pos[s], feed[s]) for s in prompts]
        seqs = [pb.SeqStep(seq_id=s, start_pos=p, num_tokens=len(t), sample=True)
                for s, p, t in chunks]
        if step == 0:
            for s in seqs:
                s.params.CopyFrom(params_to_proto(params))
        last = step == new_tokens - 1
        reply = await stream.step(seqs, head.hidden(chunks), release=tuple(prompts) if last else ())
        for s in prompts:
            result = result_of(reply, s)
            assert result.WhichOneof("outcome") == "sampled", result
            out[s].append((result.sampled.token_id, result.sampled.logprob))
            pos[s] += len(feed[s])
            feed[s] = [result.sampled.token_id]
    for s in prompts:
        head.release(s)
    return out


def generate_in_process(model_dir: Path, prompts: dict[str, list[int]], params: SamplingParams,
                        new_tokens: int) -> Generated:
    """The reference: the whole model as one stage plus the sampler, no worker at all."""
    num_layers = ModelConfig.from_dir(model_dir).num_hidden_layers
    stage = Stage.load(model_dir, 0, num_layers, dtype="float32", kv_cache_bytes=8 << 20)
    states = {s: SamplerState.create(params) for s in prompts}
    out: Generated = {s: [] for s in prompts}
    pos, feed = {s: 0 for s in prompts}, dict(prompts)
    for _ in range(new_tokens):
        batch = StepBatch(tuple(SeqChunk(s, pos[s], len(feed[s])) for s in prompts))
        ids = torch.tensor([t for s in prompts for t in feed[s]], dtype=torch.long)
        hidden = stage.forward(batch, ids)
        logits = stage.compute_logits(hidden[batch.last_token_rows()])
        for s, pick in zip(prompts, sample(logits, [states[s] for s in prompts])):
            out[s].append((pick.token_id, pick.logprob))
            pos[s] += len(feed[s])
            feed[s] = [pick.token_id]
    return out


def write_config(path: Path, **fields) -> Path:
    """A worker TOML file with the given fields."""
    lines = [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
             for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_worker_process(config_path: Path, log_path: Path) -> subprocess.Popen:
    """`duet worker --config FILE` as a child process, output to log_path."""
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "duet.cli", "worker", "--config", str(config_path)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def wait_serving(address: str, proc: subprocess.Popen, log_path: Path,
                 timeout_s: float = 180) -> None:
    """Block until the worker's health service says SERVING (or fail with its log)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}:\n{log_path.read_text()}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"worker not serving after {timeout_s} s:\n{log_path.read_text()}")


def stop_worker_process(proc: subprocess.Popen, timeout_s: float = 30) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def worker_fields(ckpt: Path, executor: str, **overrides) -> dict:
    fields = dict(model_dir=str(ckpt), layer_start=SPLIT, dtype="float32", device="cpu",
                  kv_cache_bytes=KV_CACHE_BYTES, listen=f"127.0.0.1:{free_port()}",
                  executor=executor, idle_timeout_s=IDLE_TIMEOUT_S, torch_threads=TORCH_THREADS,
                  max_message_bytes=MAX_MESSAGE_BYTES,
                  stream_kv_share=1.0)  # one stream may fill the cache (limits: own tests)
    fields.update(overrides)
    return fields


def triton_missing() -> str | None:
    """None when the bundled tritonserver is usable here, else why not."""
    try:
        TritonInstall.find()
    except TritonNotInstalled as e:
        return str(e)
    return None


class WorkerProcess:
    """A `duet worker` child process and its address."""

    def __init__(self, tmp: Path, fields: dict):
        self.address = fields["listen"]
        self.executor = fields["executor"]
        self.log_path = tmp / "worker.log"
        config = write_config(tmp / "worker.toml", run_dir=str(tmp / "run"), **fields)
        self.proc = start_worker_process(config, self.log_path)
        try:
            wait_serving(self.address, self.proc, self.log_path)
        except BaseException:
            stop_worker_process(self.proc)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_worker_process(self.proc)


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of a process's direct children."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:]
        if int(rest.split()[1]) == pid:
            found.append((int(stat.parent.name), name))
    return found


def shm_regions_of(tritonserver_pid: int) -> set[str]:
    """Python-backend shared memory regions named on the server's stubs' command lines."""
    regions = set()
    for pid, _ in children(tritonserver_pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        regions |= {a.decode() for a in argv if a.startswith(SHM_PREFIX.encode())}
    return regions
