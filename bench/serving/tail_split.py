"""The worker's host work per decode step, in one process: a TailRunner step of `batch`
decoding sequences (proto in, proto out) against the engine alone (forward + LM head +
greedy sample of another `batch` sequences in the same cache), interleaved so both see the
same load; the difference is what the worker does around the engine. Also the head's forward
(layers [0, LAYER_START) at `batch` decoding sequences), the engine part of a master step.

Run by host_overhead.py as a script with PYTHONPATH set to the source tree to measure:
    PYTHONPATH=TREE python bench/serving/tail_split.py CHECKPOINT LAYER_START [BATCH]
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from engine.batch import SeqChunk, StepBatch
from engine.sampler import SamplerState, sample
from engine.sampling_params import SamplingParams
from engine.stage import Stage
from proto import pipeline_pb2 as pb
from proto.convert import params_to_proto
from worker.tail import TailRunner

PROMPT_TOKENS, STEPS = 32, 60


def _hidden(rows: int, size: int) -> pb.Tensor:
    return pb.Tensor(data=torch.randn(rows, size).numpy().tobytes(), dtype="float32",
                     shape=[rows, size])


def measure(model: str, layer_start: int, batch: int) -> dict:
    torch.set_num_threads(1)
    tail = TailRunner.load(model, layer_start, dtype="float32", device="cpu",
                           kv_cache_bytes=2**26, block_size=16, idle_timeout_s=1e9)
    stage, size = tail.stage, tail.hidden_size
    greedy = params_to_proto(SamplingParams(temperature=0))
    tail.step("s", pb.StepRequest(step_id=1, hidden=_hidden(batch * PROMPT_TOKENS, size), seqs=[
        pb.SeqStep(seq_id=f"r{i}", num_tokens=PROMPT_TOKENS, sample=True, params=greedy)
        for i in range(batch)]))
    engine_seqs = [f"e{i}" for i in range(batch)]
    states = [SamplerState.create(SamplingParams(temperature=0)) for _ in engine_seqs]
    for s in engine_seqs:
        stage.kv.reserve(s, PROMPT_TOKENS + STEPS + 1)
    stage.forward(StepBatch(tuple(SeqChunk(s, 0, PROMPT_TOKENS) for s in engine_seqs)),
                  torch.randn(batch * PROMPT_TOKENS, size))
    step_s, engine_s = [], []
    for k in range(STEPS):
        pos = PROMPT_TOKENS + k
        request = pb.StepRequest(step_id=2 + k, hidden=_hidden(batch, size), seqs=[
            pb.SeqStep(seq_id=f"r{i}", start_pos=pos, num_tokens=1, sample=True)
            for i in range(batch)])
        hidden = torch.randn(batch, size)
        start = time.process_time()
        reply = tail.step("s", request)
        step_s.append(time.process_time() - start)
        assert all(r.WhichOneof("outcome") == "sampled" for r in reply.results), reply
        start = time.process_time()
        out = stage.forward(StepBatch(tuple(SeqChunk(s, pos, 1) for s in engine_seqs)), hidden)
        sample(stage.compute_logits(out), states)
        engine_s.append(time.process_time() - start)
    step_ms, engine_ms = (statistics.median(t) * 1e3 for t in (step_s, engine_s))
    return {"tail_step_ms": step_ms, "engine_ms": engine_ms,
            "worker_host_ms": step_ms - engine_ms,
            "head_forward_ms": head_forward_ms(model, layer_start, batch)}


def head_forward_ms(model: str, layer_end: int, batch: int) -> float:
    """CPU ms of the head's decode forward: what the master's process spends in its engine."""
    stage = Stage.load(model, 0, layer_end, dtype="float32", kv_cache_bytes=2**26)
    seqs = [f"h{i}" for i in range(batch)]
    stage.forward(StepBatch(tuple(SeqChunk(s, 0, PROMPT_TOKENS) for s in seqs)),
                  torch.randint(0, 1000, (batch * PROMPT_TOKENS,)))
    times = []
    for pos in range(PROMPT_TOKENS, PROMPT_TOKENS + STEPS):
        start = time.process_time()
        stage.forward(StepBatch(tuple(SeqChunk(s, pos, 1) for s in seqs)),
                      torch.randint(0, 1000, (batch,)))
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


if __name__ == "__main__":
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), batch)))
