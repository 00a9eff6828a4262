"""The processes and the baseline of the serving benchmark: checkpoint, in-process engine, a
worker and a master on loopback."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from engine.batch import SeqChunk, StepBatch
from engine.config import ModelConfig
from engine.stage import Stage
from engine.tiny_configs import generation_config, tiny_config
from engine.tiny_model import copy_tokenizer, random_tensors, write_shards
from runtime.children import free_port

SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
             num_key_value_heads=4, vocab_size=8000)
LAYERS, SPLIT = 8, 4  # the tail also runs the LM head, the head also serves HTTP
PROMPT_TOKENS, OUTPUT_TOKENS = 32, 64
DTYPE = "bfloat16"  # as checkpoints ship; on this CPU (avx512_bf16) batches run faster than fp32


def write_checkpoint(out: Path) -> Path:
    raw = {**tiny_config("qwen2", LAYERS), **SHAPE}
    out.mkdir(parents=True, exist_ok=True)
    write_shards(random_tensors(ModelConfig.from_dict(raw), seed=0), out, LAYERS)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "generation_config.json").write_text(json.dumps(generation_config(raw), indent=2))
    copy_tokenizer("qwen_tokenizer", out)
    return out


def prompt(i: int) -> list[int]:
    return [(1000 + 37 * i + 11 * j) % SHAPE["vocab_size"] for j in range(PROMPT_TOKENS)]


class InProcess:
    """The same engine in one process: prefill, then a greedy decode loop at batch 1."""

    def __init__(self, model: Path):
        self.stage = Stage.load(str(model), 0, LAYERS, dtype=DTYPE,
                                kv_cache_bytes=64 * 2**20)

    def request(self, i: int) -> dict:
        stage, seq, ids = self.stage, f"r{i}", prompt(i)
        start = time.perf_counter()
        hidden = stage.forward(StepBatch((SeqChunk(seq, 0, len(ids)),)), torch.tensor(ids))
        token = int(stage.compute_logits(hidden[-1:]).argmax(-1))
        first = time.perf_counter()
        for pos in range(len(ids), len(ids) + OUTPUT_TOKENS - 1):
            hidden = stage.forward(StepBatch((SeqChunk(seq, pos, 1),)), torch.tensor([token]))
            token = int(stage.compute_logits(hidden).argmax(-1))
        end = time.perf_counter()
        stage.release(seq)
        return {"ttft_s": first - start, "tok_s": (OUTPUT_TOKENS - 1) / (end - first)}


class Stack:
    """A worker process and a master process on loopback."""

    def __init__(self, tmp: Path, model: Path, executor: str, threads: int, **master_fields):
        self.tmp, self.procs = tmp, []
        port = free_port()
        worker = dict(model_dir=str(model), layer_start=SPLIT, dtype=DTYPE,
                      listen=f"127.0.0.1:{port}", executor=executor, torch_threads=threads,
                      kv_cache_bytes=256 * 2**20, run_dir=str(tmp / "triton"))
        master = dict(model_dir=str(model), head_layer_end=SPLIT, dtype=DTYPE, port=0,
                      worker_address=f"127.0.0.1:{port}", torch_threads=threads,
                      kv_cache_bytes=256 * 2**20, max_num_seqs=64, **master_fields)
        self._start("worker", worker, r"worker ready")
        self.url = self._start("master", master, r"duet master: serving (http://\S+)")

    def _start(self, role: str, fields: dict, ready: str) -> str:
        toml = self.tmp / f"{role}.toml"
        toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
        log = self.tmp / f"{role}.log"
        proc = subprocess.Popen([sys.executable, "-m", "duet.cli", role, "--config", str(toml)],
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                cwd=getattr(self, "cwd", None))  # a source tree to run
        self.procs.append(proc)
        for _ in range(1800):
            if m := re.search(ready, log.read_text(errors="replace")):
                return m.group(1) if m.groups() else ""
            if proc.poll() is not None:
                raise RuntimeError(f"{role} exited:\n{log.read_text()}")
            time.sleep(0.1)
        raise TimeoutError(f"{role} did not start")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(30)


