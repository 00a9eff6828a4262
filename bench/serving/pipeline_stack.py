"""The processes and the baseline of the serving benchmark: checkpoint, in-process engine, a
worker and a master on loopback.

The checkpoint has 8,000 embedding rows (a full 151,936-row LM head would cost more than its 8
layers and make the bench a measure of the LM head). The Qwen tokenizer as shipped has its
special tokens (151,643..151,645) and most text ids past those rows: chat requests were
refused and end-of-text could never be produced. write_checkpoint cuts the tokenizer to the
vocabulary: every id the model can produce decodes, every text encodes to ids it can embed
(the 256 byte-level symbols are ids 0..255), and the special tokens take the last rows.
"""
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
    """Random weights of SHAPE, and the Qwen tokenizer cut to its vocabulary (its special
    tokens and their ids in config.json and generation_config.json moved with it)."""
    raw = {**tiny_config("qwen2", LAYERS), **SHAPE}
    out.mkdir(parents=True, exist_ok=True)
    copy_tokenizer("qwen_tokenizer", out)
    remap = trim_tokenizer(out, SHAPE["vocab_size"])
    tensors = random_tensors(ModelConfig.from_dict(raw), seed=0)
    # The special tokens' LM-head rows are zero: a logit of 0 all but never tops the best of
    # 8,000 random ones, so every greedy request runs to max_tokens (what the bench times),
    # as a model that has not finished its answer would.
    tensors["lm_head.weight"][min(remap.values()):] = 0
    write_shards(tensors, out, LAYERS)
    raw["bos_token_id"], raw["eos_token_id"] = remap[raw["bos_token_id"]], remap[raw["eos_token_id"]]
    generation = generation_config(raw)
    generation["eos_token_id"] = [remap.get(i, i) for i in [151645, 151643]]  # <|im_end|>, eot
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out


def trim_tokenizer(folder: Path, vocab_size: int) -> dict[int, int]:
    """Rewrite the tokenizer files in `folder` (as engine.tiny_model.copy_tokenizer wrote them)
    for `vocab_size` ids; returns old -> new id of each special token."""
    data = json.loads((folder / "tokenizer.json").read_text())
    specials = data["added_tokens"]
    base = vocab_size - len(specials)  # BPE ids below this stay, specials follow
    model = data["model"]
    vocab = {token: i for token, i in model["vocab"].items() if i < base}
    model["vocab"] = vocab
    model["merges"] = [m for m in model["merges"] if _merge_within(m, vocab)]
    remap = {}
    for i, token in enumerate(specials):
        remap[token["id"]], token["id"] = base + i, base + i
    _write(folder / "tokenizer.json", data)
    _write(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(" ".join(_pair(m)) + "\n" for m in model["merges"]))
    added = json.loads((folder / "added_tokens.json").read_text())
    _write(folder / "added_tokens.json", {text: remap[i] for text, i in added.items()})
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {str(remap[int(i)]): token for i, token
                                      in config["added_tokens_decoder"].items()}
    _write(folder / "tokenizer_config.json", config)
    return remap


def _pair(merge) -> list[str]:
    """A merge as tokenizer.json writes it: "a b" (older files) or ["a", "b"]."""
    return merge.split(" ") if isinstance(merge, str) else list(merge)


def _merge_within(merge, vocab: dict[str, int]) -> bool:
    a, b = _pair(merge)
    return a in vocab and b in vocab and a + b in vocab


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


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
        python = getattr(self, "python", sys.executable)  # a tree's own environment, if any
        proc = subprocess.Popen([python, "-m", "duet.cli", role, "--config", str(toml)],
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


