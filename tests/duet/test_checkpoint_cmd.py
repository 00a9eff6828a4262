"""`duet checkpoint inspect` and `duet checkpoint plan` on DeepSeek-V3's real config.json and on
a tiny FP8 checkpoint; every figure below is worked out by hand in the comments."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from duet.cli import main
from engine.checkpoint_plan import footprint
from engine.placement import devices_for_ranges
from engine.split_plan import Host, gpu_ranges, plan_split
from engine.tiny_model import write_tiny_model

V3_CONFIG = Path(__file__).parents[1] / "fixtures" / "deepseek_v3_config.json"
GB = 10**9

# One V3 MoE layer (hidden 7168, 128 heads, q_lora 1536, kv_lora 512, rope 64, nope 128, v 128,
# 256 routed + 1 shared experts of 2048):
#   FP8 weights: q_a 7168*1536 + q_b 1536*24576 + kv_a 7168*576 + kv_b 512*32768 + o 16384*7168
#                = 187,105,280; experts 257 * 3 * 2048*7168 = 11,318,329,344
#   bf16: norms 1536 + 512 + 2*7168 = 16,384; router 256*7168 = 1,835,008; fp32 bias 256
MOE_PARAMS = 187_105_280 + 11_318_329_344 + 16_384 + 1_835_008 + 256  # 11,507,286,272
# scales (fp32, one per 128x128 block): q_a 12*56 + q_b 192*12 + kv_a 5*56 + kv_b 256*4
#   + o 56*128 + experts 257 * (16*56 * 2 + 56*16) = 702,264
MOE_CKPT = 11_505_434_624 + 4 * 702_264 + 2 * (16_384 + 1_835_008) + 4 * 256
# native keeps kv_b_proj in bf16: - its FP8 bytes and scales + 2 bytes a weight
MOE_NATIVE = MOE_CKPT - 16_777_216 - 4 * 1024 + 2 * 16_777_216
DENSE_PARAMS = 187_105_280 + 1536 + 512 + 2 * 7168 + 3 * 7168 * 18432  # 583,483,392
EMBED = 129280 * 7168  # and as many in the LM head


@pytest.fixture(scope="module")
def v3(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("v3")
    shutil.copy(V3_CONFIG, folder / "config.json")
    return folder


@pytest.fixture(scope="module")
def v3_footprint(v3):
    return footprint(v3)


def test_v3_sizes_by_hand(v3_footprint):
    fp = v3_footprint
    assert fp.layers[3].params == MOE_PARAMS == 11_507_286_272
    assert fp.layers[3].checkpoint_bytes == MOE_CKPT
    assert fp.layers[3].native_bytes == MOE_NATIVE == 11_528_720_608  # bench/fp8 measured this
    assert fp.layers[3].dequantized_bytes == 2 * MOE_PARAMS + 2 * 256  # the bias stays fp32
    assert fp.layers[0].params == DENSE_PARAMS
    # 3 dense + 58 MoE layers + embedding + LM head + final norm: DeepSeek's "671B"
    assert fp.total.params == 3 * DENSE_PARAMS + 58 * MOE_PARAMS + 2 * EMBED + 7168
    assert fp.total.params == 671_026_419_200
    assert fp.kv_bytes_per_token_layer == (512 + 64) * 2  # bf16 latent + rope key


def test_v3_split_over_two_hosts(v3_footprint):
    fp, host = v3_footprint, Host(8, 80 * GB, 4 * GB)
    plan = plan_split(fp, host, host, native=True)
    # per-step bytes: 3 dense layers (0.60 GB each) + 58 MoE layers (11.53 GB) + head (1.85 GB)
    # = 672.3 GB; k = 32 gives 1.80 + 29 * 11.53 = 336.13 GB vs 29 * 11.53 + 1.85 = 336.19 GB
    assert plan.k == 32
    assert plan.step_bytes == (3 * fp.layers[0].native_bytes + 29 * MOE_NATIVE,
                               29 * MOE_NATIVE + fp.head.native_bytes)
    first, last = plan.hosts[0][0], plan.hosts[1][-1]
    assert first.layers[0] == 0 and last.layers[1] == 61
    assert all(g.weight_bytes <= 76 * GB for gpus in plan.hosts for g in gpus)
    with pytest.raises(ValueError, match="dequantized weights need 1342 GB"):
        plan_split(fp, host, host, native=False)  # 2 bytes a weight: 1.34 TB > 1.28 TB


def test_a_stage_loads_on_the_planned_gpus(v3_footprint):
    """Stage.load on a host of several GPUs places layers as the planner prints them: the
    worker's [32, 61) on 8 x 80 GB is 29 layers of 11.53 GB plus the 1.85 GB head, ~42 GB a GPU,
    so 3 or 4 layers each (equal shares of ceil(29 / 8) = 4 would leave the last GPU one)."""
    ranges = gpu_ranges(v3_footprint, 32, 61, Host(8, 80 * GB, 4 * GB), native=True)
    counts = [b - a for a, b in ranges]
    assert ranges[0][0] == 32 and ranges[-1][1] == 61 and sum(counts) == 29
    assert all(a == b for (_, a), (b, _) in zip(ranges, ranges[1:]))  # contiguous, in order
    assert set(counts) == {3, 4}
    devices = devices_for_ranges(ranges)
    assert sorted(devices) == list(range(32, 61))
    assert [devices[a].index for a, _ in ranges] == list(range(8))
    assert gpu_ranges(v3_footprint, 0, 61, Host(8, 80 * GB, 4 * GB), native=True) is None  # 674 GB


def test_inspect_and_plan_print_the_figures(v3, capsys):
    assert main(["checkpoint", "inspect", str(v3), "--layers", "3:4"]) == 0
    out = capsys.readouterr().out
    assert "parameters       671,026,419,200" in out
    assert f"fp8 = native     {MOE_NATIVE:,} bytes" in out
    assert "1,152 bytes per token per layer" in out
    assert main(["checkpoint", "plan", str(v3), "--host-a", "8x80", "--host-b", "8x80"]) == 0
    assert "split k = 32" in capsys.readouterr().out


def test_bad_arguments_are_one_line(v3, capsys):
    assert main(["checkpoint", "plan", str(v3), "--host-a", "8", "--host-b", "8x80"]) == 2
    assert "--host-a must be COUNTxGB" in capsys.readouterr().err
    assert main(["checkpoint", "inspect", str(v3), "--layers", "5:99"]) == 2
    assert "the model has layers 0..60" in capsys.readouterr().err


def test_tiny_fp8_checkpoint_matches_its_files(tmp_path, capsys):
    """The computed checkpoint bytes equal the tensors written (headers aside), but for the
    router bias: the tiny writer stores it in bf16, V3 ships (and the count assumes) fp32."""
    folder = write_tiny_model("deepseek_v3", tmp_path / "t", fp8=True, tokenizer=False)
    fp = footprint(folder)
    written = json.loads((folder / "model.safetensors.index.json").read_text())
    bias_bytes = 3 * 8 * 2  # 3 MoE layers x 8 experts x 2 more bytes in fp32
    assert fp.total.checkpoint_bytes == written["metadata"]["total_size"] + bias_bytes
    assert main(["checkpoint", "inspect", str(folder)]) == 0
    assert f"parameters       {fp.total.params:,}" in capsys.readouterr().out
