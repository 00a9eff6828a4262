"""Where a decode step's time goes on a GPU: torch.profiler over a few layers of a real shape.

    python bench/gpu/profile_decode.py SHAPE LAYERS BATCH   (run from the repo root)
"""
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.gpu import decode_gpu as d
from engine.batch import SeqChunk, StepBatch
from engine.stage import Stage


def main(shape: str, layers: int, batch: int) -> None:
    arch, _, overrides = d.SHAPES[shape]
    d.SHAPES[shape] = (arch, layers, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        folder = d.write_config(shape, Path(tmp))
        stage = Stage.load(folder, 0, layers, dtype="bfloat16", device="cuda",
                           kv_cache_bytes=2**30, load_format="dummy")
        ids = torch.randint(0, 1000, (batch * 32,))
        step = StepBatch(tuple(SeqChunk(f"s{i}", 0, 32) for i in range(batch)))
        tokens = stage.compute_logits(stage.forward(step, ids)[step.last_token_rows()]).argmax(-1)

        def decode(n: int) -> torch.Tensor:
            s = StepBatch(tuple(SeqChunk(f"s{i}", 32 + n, 1) for i in range(batch)))
            return stage.compute_logits(stage.forward(s, tokens)).argmax(-1)

        for n in range(5):
            decode(n)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for n in range(5, 25):
            decode(n)
        torch.cuda.synchronize()
        print(f"{shape} layers={layers} batch={batch} ms/step={(time.perf_counter() - t0) / 20 * 1e3:.2f}")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for n in range(25, 30):
                decode(n)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
