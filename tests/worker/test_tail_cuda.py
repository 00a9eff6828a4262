"""The TailRunner on a CUDA device gives the CPU's tokens (the deployed configuration)."""
import json

import pytest
import torch

from engine.config import ModelConfig
from engine.tiny_configs import tiny_config
from engine.tiny_model import random_tensors, write_shards
from proto import pipeline_pb2 as pb
from proto.convert import tensor_to_proto
from worker.tail import TailRunner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def weights_only_ckpt(tmp_path_factory):
    """Config and weights, no tokenizer files (the tail never reads them)."""
    out = tmp_path_factory.mktemp("qwen2-weights")
    raw = tiny_config("qwen2", 4)
    write_shards(random_tensors(ModelConfig.from_dict(raw), seed=0), out, 4)
    (out / "config.json").write_text(json.dumps(raw))
    return out


def decode(tail: TailRunner, hidden: torch.Tensor, steps: int) -> list[tuple[int, float]]:
    """Prefill 3 rows of one sequence, then decode with the same row; greedy tokens."""
    params = pb.SamplingParams(temperature=0, logprobs=0, frequency_penalty=0.3)
    seq = pb.SeqStep(seq_id="a", start_pos=0, num_tokens=3, sample=True, params=params)
    out, request = [], pb.StepRequest(step_id=1, seqs=[seq], hidden=tensor_to_proto(hidden))
    for step in range(steps):
        sampled = tail.step("s", request).results[0].sampled
        out.append((sampled.token_id, sampled.logprob))
        request = pb.StepRequest(step_id=step + 2, seqs=[pb.SeqStep(
            seq_id="a", start_pos=3 + step, num_tokens=1, sample=True)],
            hidden=tensor_to_proto(hidden[:1]))
    return out


def test_cuda_tail_matches_cpu(weights_only_ckpt):
    hidden = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    runs = {}
    for device in ("cpu", "cuda"):
        tail = TailRunner.load(str(weights_only_ckpt), 2, dtype="float32", device=device,
                               kv_cache_bytes=1 << 20, block_size=16, idle_timeout_s=60)
        runs[device] = decode(tail, hidden, 6)
    assert [t for t, _ in runs["cuda"]] == [t for t, _ in runs["cpu"]]
    for (_, a), (_, b) in zip(runs["cuda"], runs["cpu"]):
        assert a == pytest.approx(b, abs=1e-3)
