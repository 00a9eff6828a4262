"""Where a decode step's time goes on a GPU: torch.profiler over graphed decode steps of a real
shape (forward as one CUDA graph, LM head, greedy sampler, the tokens read back), kernels
grouped by name with their device time per step.

    python -m bench.gpu.profile_decode SHAPE LAYERS BATCH   (run from the repo root)
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

STEPS = 10


def main(shape: str, layers: int, batch: int) -> None:
    arch, _, overrides, hf = d.SHAPES[shape]
    d.SHAPES[shape] = (arch, layers, overrides, hf)
    with tempfile.TemporaryDirectory() as tmp:
        folder = d.write_config(shape, Path(tmp))
        stage = Stage.load(folder, 0, layers, dtype="bfloat16", device="cuda",
                           kv_cache_bytes=2**30, load_format="dummy", cuda_graph_max_batch=batch)
        ids = torch.randint(0, 1000, (batch * 32,))
        step = StepBatch(tuple(SeqChunk(f"s{i}", 0, 32) for i in range(batch)))
        tokens = stage.compute_logits(stage.forward(step, ids)[step.last_token_rows()]).argmax(-1)

        def decode(n: int) -> list[int]:
            s = StepBatch(tuple(SeqChunk(f"s{i}", 32 + n, 1) for i in range(batch)))
            return stage.compute_logits(stage.forward(s, torch.tensor(tokens))).argmax(-1).tolist()

        for n in range(5):
            tokens = decode(n)
        t0 = time.perf_counter()
        for n in range(5, 25):
            tokens = decode(n)
        print(f"{shape} layers={layers} batch={batch} ms/step={(time.perf_counter() - t0) / 20 * 1e3:.2f}")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for n in range(25, 25 + STEPS):
                tokens = decode(n)
        averages = prof.key_averages()
        kernels = [e for e in averages if e.device_type.name == "CUDA"]
        total_us = sum(e.self_device_time_total for e in kernels) / STEPS
        print(f"device time per step {total_us / 1e3:.3f} ms in {sum(e.count for e in kernels) / STEPS:.0f} kernels")
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:20]:
            print(f"{e.self_device_time_total / STEPS:9.1f} us/step {e.count / STEPS:6.1f}/step  {e.key[:110]}")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
