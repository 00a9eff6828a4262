"""Tensor parallelism on the CPU: two gloo ranks (this process and one follower it starts)
give the logits and greedy tokens of one process, for every architecture and split point."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.batch import SeqChunk, StepBatch
from engine.config import ModelConfig
from engine.fp8 import quantize_block_fp8
from engine.parallel import NO_MULTICAST_ENV, RankFailure
from engine.rank_launcher import RankLauncher
from engine.sharding import check_divisible
from engine.stage import Stage
from engine.tiny_model import FP8_WEIGHT, write_shards

ARCHS = ["llama", "qwen2", "deepseek_v2", "deepseek_v3"]
NUM_LAYERS = 4  # tiny_checkpoint's default
KV_CACHE_BYTES = 4 * 2**20
ATOL = 1e-4  # fp32: only the summation order differs (partial sums meet in all-reduces)
FP8_TEST_BLOCK = (16, 16)
HANG_TIMEOUT_S = 8.0  # a rank silent this long inside a step fails it  # small blocks: each rank's share spans scale blocks of its own


@pytest.fixture(scope="module")
def launcher():
    """One follower rank for the whole module (starting one costs seconds: torch's imports)."""
    torch.set_num_threads(1)  # the follower starts with this process's thread count
    ranks = RankLauncher(2, timeout_s=HANG_TIMEOUT_S)
    ranks.start()
    yield ranks
    ranks.stop()


def tp_stages(launcher: RankLauncher, model_dir: Path, bounds, **kwargs) -> list[Stage]:
    kwargs.setdefault("kv_cache_bytes", KV_CACHE_BYTES)
    return [launcher.load(model_dir, a, b, **kwargs) for a, b in zip(bounds, bounds[1:])]


def step(stages: list[Stage], seq: str, start: int, ids: list[int]) -> torch.Tensor:
    """One chunk through the stages, as the master and the worker run them -> logits [T, V]."""
    batch = StepBatch((SeqChunk(seq, start, len(ids)),))
    x = torch.tensor(ids)
    for stage in stages:
        x = stage.forward(batch, x)
    return stages[-1].compute_logits(x)


def run_steps(stages: list[Stage], ids: list[int], decode_steps: int):
    """A prefill, then greedy decode steps: the logits of each step and the tokens taken."""
    logits = [step(stages, "a", 0, ids)]
    tokens = [int(logits[-1][-1].argmax())]
    for i in range(decode_steps):
        logits.append(step(stages, "a", len(ids) + i, [tokens[-1]]))
        tokens.append(int(logits[-1][-1].argmax()))
    for stage in stages:
        stage.release("a")
    return logits, tokens


def run_tp(launcher: RankLauncher, stages: list[Stage], ids: list[int], decode_steps: int):
    """run_steps on tensor-parallel stages, unloaded from the ranks afterwards."""
    try:
        return run_steps(stages, ids, decode_steps)
    finally:
        for stage in stages:
            launcher.unload(stage)


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def whole(model_dir: Path, **kwargs) -> list[Stage]:
    """The model as one stage in this process: the reference."""
    kwargs.setdefault("kv_cache_bytes", KV_CACHE_BYTES)
    return [Stage.load(model_dir, 0, NUM_LAYERS, **kwargs)]


def test_every_rank_runs_with_nvlink_multicast_off(launcher):
    envs = launcher.rank_environments()
    assert [e["pid"] for e in envs] == [f.process.pid for f in launcher.followers]
    for env in [*envs, dict(os.environ)]:
        assert {k: env.get(k) for k in NO_MULTICAST_ENV} == NO_MULTICAST_ENV


@pytest.mark.parametrize("arch", ARCHS)
def test_two_ranks_give_the_single_process_logits_at_every_split(
        launcher, tiny_checkpoint, prompt, arch, split):
    ckpt = tiny_checkpoint(arch)
    ids = prompt(13, seed=split)
    want, want_tokens = run_steps(whole(ckpt), ids, 4)
    got, tokens = run_tp(launcher, tp_stages(launcher, ckpt, (0, split, NUM_LAYERS)), ids, 4)
    assert_same(got, want)
    assert tokens == want_tokens


def test_each_rank_holds_its_share_of_the_weights(launcher, tiny_checkpoint):
    ckpt = tiny_checkpoint("deepseek_v3")
    (one,) = whole(ckpt)
    (half,) = tp_stages(launcher, ckpt, (0, NUM_LAYERS))
    launcher.unload(half)
    # all but the norms, routers and MLA's latent projections are split in two
    assert 0.5 < half.weight_bytes() / one.weight_bytes() < 0.55
    experts = half.model.model.layers["1"].mlp.experts
    assert experts.gate_up_proj.shape[0] == 2 * 4  # 4 of the 8 routed experts, no shared slot


def fp8_checkpoint(src: Path, dst: Path) -> Path:
    """The checkpoint with its linear weights in FP8 e4m3 + 16x16 block scales."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model*.safetensors*"))
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {}
    for shard in sorted(set(index.values())):
        tensors.update(load_file(str(src / shard)))
    for name in [n for n in tensors if FP8_WEIGHT.match(n)]:
        tensors[name], tensors[name + "_scale_inv"] = quantize_block_fp8(tensors[name].float(), FP8_TEST_BLOCK)
    config = json.loads((src / "config.json").read_text())
    write_shards(tensors, dst, config["num_hidden_layers"])
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                     "weight_block_size": list(FP8_TEST_BLOCK)}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_fp8_block_scales_are_sharded_with_their_weights(launcher, tiny_checkpoint, prompt,
                                                         tmp_path):
    ckpt = fp8_checkpoint(tiny_checkpoint("deepseek_v3"), tmp_path / "fp8")
    ids = prompt(9, seed=7)
    want, want_tokens = run_steps(whole(ckpt, fp8="dequantize"), ids, 2)
    stages = tp_stages(launcher, ckpt, (0, 2, NUM_LAYERS), fp8="dequantize")
    got, tokens = run_tp(launcher, stages, ids, 2)
    assert_same(got, want)
    assert tokens == want_tokens


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3"])
def test_a_size_that_does_not_divide_the_model_is_one_readable_error(tiny_checkpoint, arch):
    config = ModelConfig.from_dir(tiny_checkpoint(arch))
    with pytest.raises(ValueError, match=r"tensor_parallel_size = 3 does not divide the model's \w+"):
        check_divisible(config, 3)
    check_divisible(config, 2)


def test_a_hung_rank_fails_the_step_within_the_timeout_and_stop_ends_it(
        launcher, tiny_checkpoint, prompt):
    """The module's last test: it leaves the group broken (restarts: the worker's e2e test)."""
    ckpt = tiny_checkpoint("qwen2")
    ids = prompt(7, seed=3)
    stages = tp_stages(launcher, ckpt, (0, NUM_LAYERS))
    run_steps(stages, ids, 1)
    follower = launcher.followers[0].process
    os.kill(follower.pid, signal.SIGSTOP)  # alive, but silent
    started = time.monotonic()
    with pytest.raises(RankFailure, match="rank 0 of 2"):
        step(stages, "b", 0, ids)
    assert time.monotonic() - started < 3 * HANG_TIMEOUT_S
    launcher.stop()  # the stopped rank cannot answer "stop": it is killed
    assert follower.poll() is not None and launcher.followers == []
