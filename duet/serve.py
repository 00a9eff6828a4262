"""`duet serve`: the embedded default — a worker and a master on this machine, one command.

Without `--model` it serves a tiny random-weight DeepSeek-V3 checkpoint, written once under
`$XDG_CACHE_HOME/duet` (else `~/.cache/duet`). The worker runs as a child process (on the
`triton` executor by default, as deployed: it manages its own tritonserver); the master runs
in this process. A worker that dies is restarted with backoff (duet/supervise.py) and the
master reconnects; one that keeps dying ends `duet serve` with exit code 1. Ctrl-C or SIGTERM
stops the master, then the worker, which stops Triton.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from duet.supervise import RestartPolicy, Supervised
from runtime.children import die_with_parent, free_port

TINY_ARCH = "deepseek_v3"
WORKER_STOP_S = 30.0  # SIGTERM, then this long for the worker (and Triton) to exit, then SIGKILL
READY_TIMEOUT_S = 600.0  # loading a large checkpoint on the worker can take minutes


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run a worker and a master on this machine (the embedded default)",
        description=__doc__.splitlines()[0])
    p.add_argument("--model", metavar="DIR",
                   help=f"checkpoint folder (default: a tiny random {TINY_ARCH} checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="API port (default 8000; 0 = any)")
    p.add_argument("--executor", choices=("triton", "local"), default="triton",
                   help="how the worker runs the tail (default triton, as deployed)")
    p.add_argument("--split", type=int, default=0,
                   help="layers the master runs, k (default: half of them)")
    p.add_argument("--device", default="", help="torch device (default cuda if present, else cpu)")
    p.add_argument("--dtype", default="", help="default bfloat16 on cuda, float32 on cpu")
    p.add_argument("--fp8", choices=("native", "dequantize"), default="native",
                   help="FP8 checkpoints: keep e4m3 weights on GPUs that can (default), or "
                   "dequantize them to --dtype at load")
    p.add_argument("--kv-cache-bytes", type=int, default=256 * 2**20,
                   help="KV cache of each stage in bytes (default 256 MiB)")
    p.add_argument("--torch-threads", type=int, default=-1,
                   help="intra-op CPU threads of each role (default: half the cores on cpu, "
                   "torch's default on cuda)")
    p.add_argument("--max-restarts", type=int, default=RestartPolicy.max_restarts,
                   help="worker restarts allowed within %g s before giving up with exit code 1 "
                   "(default %d)" % (RestartPolicy.window_s, RestartPolicy.max_restarts))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "duet"


def tiny_checkpoint(root: Path) -> Path:
    """The tiny checkpoint under `root`, written first if missing (atomically, by rename)."""
    from engine.tiny_model import write_tiny_model

    out = root / f"tiny-{TINY_ARCH}"
    if (out / "config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tiny-{TINY_ARCH}-", dir=root))
    write_tiny_model(TINY_ARCH, staging)
    try:
        staging.rename(out)
    except OSError:  # another `duet serve` got there first
        shutil.rmtree(staging, ignore_errors=True)
    return out


def split_point(model_dir: Path, split: int) -> tuple[int, int]:
    """(k, L): the master runs [0, k), the worker [k, L)."""
    from engine.config import ModelConfig

    layers = ModelConfig.from_dir(model_dir).num_hidden_layers
    k = split or layers // 2
    if not 1 <= k < layers:
        raise ValueError(f"--split: must be in [1, {layers - 1}] for a {layers}-layer model, got {k}")
    return k, layers


def start_worker(run_dir: Path, model_dir: Path, k: int, port: int, args) -> subprocess.Popen:
    """`duet worker` in its own session: Ctrl-C reaches us, and we stop it in order."""
    toml = run_dir / "worker.toml"
    fields = dict(model_dir=str(model_dir), layer_start=k, dtype=args.dtype, device=args.device,
                  kv_cache_bytes=args.kv_cache_bytes, listen=f"127.0.0.1:{port}",
                  executor=args.executor, run_dir=str(run_dir / "triton"),
                  torch_threads=args.threads, fp8=args.fp8)
    toml.write_text("".join(f"{key} = {_toml(value)}\n" for key, value in fields.items()))
    return subprocess.Popen([sys.executable, "-m", "duet.cli", "worker", "--config", str(toml)],
                            start_new_session=True, preexec_fn=die_with_parent)


def _toml(value) -> str:
    return str(value) if isinstance(value, int) else '"' + str(value).replace('"', '\\"') + '"'


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _announce(url: str, model: str, worker: Supervised) -> None:
    """Once /ready says 200: the URL and a curl line to paste; from then on a dead worker
    is restarted (before, its death means it cannot start at all)."""
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per readiness poll
    async with httpx.AsyncClient(timeout=5.0) as client:
        for _ in range(int(READY_TIMEOUT_S / 0.2)):
            if (await client.get(f"{url}/ready")).status_code == 200:
                break
            await asyncio.sleep(0.2)
        else:
            return  # never ready: the master's /ready says why
    worker.up_once = True
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "Hello!"}], '
            '"max_tokens": 32}' % model)
    print(f"duet serve: ready at {url}\n"
          f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'\n"
          f"Press Ctrl-C to stop.", flush=True)


async def _serve(args: argparse.Namespace) -> int:
    import torch

    from master.config import load_master_config
    from master.main import run as run_master
    from runtime.gc_freeze import freeze_loaded_objects

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    # Two processes on one CPU: half the cores each, or torch's threads oversubscribe them.
    args.threads = max(1, (os.cpu_count() or 2) // 2) if args.device == "cpu" else 0
    if args.torch_threads >= 0:
        args.threads = args.torch_threads
    model_dir = Path(args.model) if args.model else await asyncio.to_thread(tiny_checkpoint,
                                                                            cache_dir())
    k, layers = split_point(model_dir.resolve(), args.split)
    print(f"duet serve: {model_dir} ({layers} layers): master [0, {k}), worker [{k}, {layers}) "
          f"on {args.executor}, {args.device} {args.dtype}", flush=True)
    config = load_master_config(
        model_dir=str(model_dir.resolve()), host=args.host, port=args.port, head_layer_end=k,
        dtype=args.dtype, device=args.device, fp8=args.fp8, kv_cache_bytes=args.kv_cache_bytes,
        worker_address=f"127.0.0.1:{free_port()}", reconnect_max_s=1.0,
        torch_threads=args.threads)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="duet-serve-") as run_dir:
        port = int(config.worker_address.rsplit(":", 1)[1])
        worker = Supervised("worker", lambda: start_worker(Path(run_dir), model_dir.resolve(),
                                                           k, port, args),
                            RestartPolicy(max_restarts=args.max_restarts))
        worker.spawn()
        tasks = [asyncio.create_task(_keep_alive(worker, stop))]

        def ready(url: str) -> None:
            freeze_loaded_objects()  # this process's loaded objects: out of the full GC passes
            tasks.append(asyncio.create_task(_announce(url, config.served_model_name, worker)))

        try:
            await run_master(config, stop=stop, on_ready=ready)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.to_thread(stop_worker, worker.proc)
    print("duet serve: stopped", flush=True)
    if worker.gave_up:
        return 1
    return 0 if worker.proc.returncode in (0, -signal.SIGTERM) else 1


async def _keep_alive(worker: Supervised, stop: asyncio.Event) -> None:
    """Restart the worker as long as the policy allows; then stop serving (exit code 1)."""
    await worker.run()
    stop.set()
