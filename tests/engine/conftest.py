"""Tiny random checkpoints (built once per session) and a way to run stages as a pipeline."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.batch import SeqChunk, StepBatch
from engine.stage import Stage
from engine.tiny_model import write_tiny_model

# Architectures every end-to-end engine test runs on (tests/engine/test_deepseek.py adds the
# DeepSeek routing and rope variants).
ARCHS = ["llama", "qwen2", "deepseek_v2", "deepseek_v3"]
NUM_LAYERS = 4
KV_CACHE_BYTES = 4 * 2**20


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny matrices on a shared 2-core box: OpenMP threads only spin against each other
    (measured: 32 decode steps take 10x longer with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(arch, **write_tiny_model kwargs) -> folder, written once per session."""
    made: dict[tuple, Path] = {}

    def get(arch: str, **kwargs) -> Path:
        kwargs.setdefault("num_layers", NUM_LAYERS)
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = write_tiny_model(arch, tmp_path_factory.mktemp(arch), **kwargs)
        return made[key]

    return get


@pytest.fixture(scope="session", params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def ckpt(arch, tiny_checkpoint) -> Path:
    return tiny_checkpoint(arch)


@pytest.fixture(scope="session")
def hf_model(ckpt):
    """transformers' own implementation of the checkpoint, in fp32: the reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()


class Pipeline:
    """Stages run one after another, as the master and the worker run them."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages

    def step(self, chunks: list[tuple[str, int, int]], token_ids: list[int]) -> torch.Tensor:
        """One step of (seq_id, start_pos, num_tokens) chunks -> fp32 logits [T, V]."""
        batch = StepBatch(tuple(SeqChunk(*c) for c in chunks))
        x = torch.tensor(token_ids, dtype=torch.long)
        for stage in self.stages:
            x = stage.forward(batch, x)
        return self.stages[-1].compute_logits(x)

    def greedy(self, seq_id: str, prompt: list[int], num_tokens: int) -> list[int]:
        """Prefill then decode one token at a time, always taking the argmax."""
        logits = self.step([(seq_id, 0, len(prompt))], prompt)
        out = [int(logits[-1].argmax())]
        while len(out) < num_tokens:
            pos = len(prompt) + len(out) - 1
            out.append(int(self.step([(seq_id, pos, 1)], [out[-1]])[-1].argmax()))
        return out


@pytest.fixture
def pipeline():
    """pipeline(ckpt, splits=(k,), **Stage.load kwargs) -> Pipeline over [0,k), [k,L)."""

    def make(model_dir: Path, splits=(), **kwargs) -> Pipeline:
        kwargs.setdefault("kv_cache_bytes", KV_CACHE_BYTES)
        bounds = [0, *splits, NUM_LAYERS]
        return Pipeline([Stage.load(model_dir, a, b, **kwargs) for a, b in zip(bounds, bounds[1:])])

    return make


def prompt_ids(n: int, seed: int = 0, vocab: int = 120_000) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


@pytest.fixture
def prompt():
    """prompt(n, seed=0) -> n token ids every architecture's vocabulary holds."""
    return prompt_ids


def pytest_generate_tests(metafunc):
    """A test asking for `split` runs once per split point k of the tiny model (1..L-1)."""
    if "split" in metafunc.fixturenames:
        metafunc.parametrize("split", range(1, NUM_LAYERS))


def greedy_tokens(stage: Stage, seq: str, prompt: list[int], n: int, forced: list[int] | None = None):
    """n greedy tokens; with `forced`, each step is fed forced[i] (same prefix for both modes)."""
    hidden = stage.forward(StepBatch((SeqChunk(seq, 0, len(prompt)),)), torch.tensor(prompt))
    out = []
    for i in range(n):
        out.append(int(stage.compute_logits(hidden[-1:]).argmax(-1)))
        feed = forced[i] if forced else out[-1]
        hidden = stage.forward(StepBatch((SeqChunk(seq, len(prompt) + i, 1),)), torch.tensor([feed]))
    stage.release(seq)
    return out


@pytest.fixture
def greedy():
    """greedy(stage, seq_id, prompt, n, forced=None) -> n greedy token ids."""
    return greedy_tokens
