"""Which managed-tritonserver setting lets the Python-backend stub read its inputs on this host.

On the H200 host the stub read fill bytes instead of every BYTES input, so each call killed it;
the same files work on the CPU host (found: numpy 2 in the stub's environment, bench/gpu/
pipeline.md). This tries candidate cures in
order: Python-backend models echo the length and MD5 of a step input (7,207 bytes as a decode
step's message; 40; 500,000) and of a UINT8 input (7,168 bytes, one bf16 hidden row), and say
how many GPUs torch sees inside the stub (the tail needs them) and which numpy it imported.
The step goes once as BYTES (the tail's protocol) and once as UINT8 (no BYTES tensor anywhere,
the answer included). The first variant where
both come back intact wins (--env-out); a variant that fails puts the server's log (with the
stub's lines) into the JSON. Before the variants: what /dev/shm is here, and whether two
processes see each other's writes through a file mapped from it (also after it grows).

    python -m bench.gpu.triton_cure --out cure.json [--env-out cure.env]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import mmap
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import InferInput

from worker.triton_process import ManagedTriton
from worker.triton_repo import TritonInstall

NO_CUDA_POOL = "--cuda-memory-pool-byte-size=0:0"
# name -> extra tritonserver flags; tried in this order. The recorded runs (triton_cure*.json)
# also tried "c_server_without_gpus": the server started with no GPU visible and its stub given
# them back through a wrapper script; it failed like the others, and the wrapper was removed.
VARIANTS = {
    "a_today": (),
    "b_no_cuda_pool": (NO_CUDA_POOL,),
    "d_small_shm_region": (NO_CUDA_POOL, "--backend-config=python,shm-default-byte-size=4194304",
                           "--backend-config=python,shm-growth-byte-size=1048576"),
}
# "echo" takes the step as BYTES (as the tail model does); "echo_u8" has no BYTES tensor at
# all (its step and its answer are UINT8): whether only the BYTES path is broken here.
CONFIG = """name: "$name"
backend: "python"
max_batch_size: 0
input [
  { name: "STEP" data_type: $step_type dims: [ -1 ] },
  { name: "HIDDEN" data_type: TYPE_UINT8 dims: [ -1 ] }
]
output [ { name: "RESULT" data_type: $step_type dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
MODELS = {"echo_u8": "TYPE_UINT8", "echo": "TYPE_STRING"}
MODEL_PY = '''
import hashlib
import os
import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        print(f"duet echo stub: numpy {np.__version__} from {np.__file__}", flush=True)
        self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if self.gpus:
            torch.ones(1, device="cuda").sum().item()  # the stub can really use one

    def execute(self, requests):
        return [self.one(r) for r in requests]

    def one(self, r):
        step = pb_utils.get_input_tensor_by_name(r, "STEP").as_numpy()
        step = step[0] if step.dtype == np.object_ else step.tobytes()
        hidden = pb_utils.get_input_tensor_by_name(r, "HIDDEN").as_numpy().tobytes()
        text = (f"{len(step)} {hashlib.md5(step).hexdigest()} "
                f"{len(hidden)} {hashlib.md5(hidden).hexdigest()} gpus={self.gpus} "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} "
                f"numpy={np.__version__}")
        as_bytes = pb_utils.get_input_tensor_by_name(r, "STEP").as_numpy().dtype == np.object_
        out = (np.array([text.encode()], dtype=np.object_) if as_bytes
               else np.frombuffer(text.encode(), dtype=np.uint8))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("RESULT", out)])
'''


def shm_facts() -> dict:
    """What /dev/shm is, and a two-process coherence check of a file mapped from it."""
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip()  # noqa
    facts = {"df": run("df", "-h", "/dev/shm"),
             "fs_type": run("stat", "-f", "-c", "%T", "/dev/shm"),
             "mounts": [m for m in run("cat", "/proc/mounts").splitlines() if " / " in m
                        or "shm" in m]}
    path = Path("/dev/shm") / f"duet_cure_{os.getpid()}"
    try:
        facts["coherence"] = _coherence(path)
    except Exception as e:  # a finding too
        facts["coherence"] = f"{type(e).__name__}: {e}"
    finally:
        path.unlink(missing_ok=True)
    return facts


def _coherence(path: Path) -> str:
    """This process maps 1 MiB, a child writes at 4 KiB; then this one grows the file to
    8 MiB and the child (mapping it anew) writes at 6 MiB: does this mapping see both?"""
    path.write_bytes(b"\0" * 2**20)
    child = ("import mmap,sys;f=open(sys.argv[1],'r+b');m=mmap.mmap(f.fileno(),0);"
             "o=int(sys.argv[2]);m[o:o+7]=b'written';m.flush()")
    with open(path, "r+b") as f:
        first = mmap.mmap(f.fileno(), 0)
        subprocess.run([sys.executable, "-c", child, str(path), "4096"], check=True)
        small = bytes(first[4096:4103])
        os.ftruncate(f.fileno(), 8 * 2**20)
        subprocess.run([sys.executable, "-c", child, str(path), str(6 * 2**20)], check=True)
        grown = mmap.mmap(f.fileno(), 0)
        big = bytes(grown[6 * 2**20:6 * 2**20 + 7])
        first.close()
        grown.close()
    return f"first mapping saw {small!r}; after growing, {big!r} (want b'written' twice)"


async def check(url: str, model: str) -> list[str]:
    """Three calls; raises on the first whose echo is not what was sent."""
    client = triton_grpc.InferenceServerClient(url)
    out = []
    try:
        for _ in range(100):  # the other model may still be loading
            if await client.is_model_ready(model):
                break
            await asyncio.sleep(0.2)
        for size in (7207, 40, 500_000):
            step, hidden = np.random.bytes(size), np.random.bytes(7168)
            if model == "echo":
                a = InferInput("STEP", [1], "BYTES")
                a.set_data_from_numpy(np.array([step], dtype=np.object_))
            else:
                a = InferInput("STEP", [size], "UINT8")
                a.set_data_from_numpy(np.frombuffer(step, dtype=np.uint8))
            b = InferInput("HIDDEN", [len(hidden)], "UINT8")
            b.set_data_from_numpy(np.frombuffer(hidden, dtype=np.uint8))
            result = (await asyncio.wait_for(client.infer(model, [a, b]), 60)).as_numpy("RESULT")
            got = (result[0] if result.dtype == np.object_ else result.tobytes()).decode()
            want = (f"{size} {hashlib.md5(step).hexdigest()} 7168 "
                    f"{hashlib.md5(hidden).hexdigest()}")
            if not got.startswith(want):
                raise AssertionError(f"sent {want}, the stub saw {got}")
            out.append(got)
    finally:
        await client.close()
    return out


async def try_variant(tmp: Path, args: tuple[str, ...]) -> dict:
    repo = tmp / "models"
    for name, step_type in MODELS.items():
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(
            CONFIG.replace("$name", name).replace("$step_type", step_type))
        (repo / name / "1" / "model.py").write_text(MODEL_PY)
    server = ManagedTriton(TritonInstall.find(), repo, tmp, "echo", start_timeout_s=90,
                           server_args=args)
    started, out = time.perf_counter(), {}
    try:
        await server.start()
        for model in MODELS:  # UINT8 first: a stub killed by BYTES is the other model's
            try:
                out[model] = {"ok": True, "echoes": await check(server.url, model)}
            except Exception as e:  # a dead stub, a wrong echo: findings
                out[model] = {"ok": False, "why": f"{type(e).__name__}: {str(e)[-1500:]}"}
        ok = out["echo"]["ok"] and out["echo_u8"]["ok"]
        if ok and "gpus=0" in out["echo"]["echoes"][0] and torch.cuda.is_available():
            ok, out["why"] = False, "inputs intact, but the stub sees no GPU"
        out["why"] = out.get("why") or out["echo"].get("why") or out["echo_u8"].get("why", "")
    except Exception as e:  # TritonStartError
        ok, out["why"] = False, f"{type(e).__name__}: {str(e)[-1500:]}"
    finally:
        await server.stop()
    out.update(ok=ok, seconds=time.perf_counter() - started)
    if not ok:
        out["log"] = server.log_tail(80)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--env-out", default="", help="export lines for the winning variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "shm": shm_facts(), "variants": {}, "winner": None}
    print(json.dumps(results["shm"], indent=1), flush=True)
    for name in args.variants.split(","):
        flags = VARIANTS[name]
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(try_variant(Path(tmp), flags))
        results["variants"][name] = {"server_args": list(flags), **result}
        print(name, json.dumps({k: v for k, v in result.items() if k != "log"}), flush=True)
        if not result["ok"]:
            print(result.get("log", ""), flush=True)
        if result["ok"] and not results["winner"]:
            results["winner"] = name
            if args.env_out:
                Path(args.env_out).write_text(
                    f"export DUET_WORKER_TRITON_SERVER_ARGS='{' '.join(flags)}'\n")
        Path(args.out).write_text(json.dumps(results, indent=2))
        if result["ok"]:
            break
    sys.exit(0 if results["winner"] else 1)


if __name__ == "__main__":
    main()
