"""`duet checkpoint plan DIR --host-a 8x80 --host-b 8x80`: split k, per-GPU layers, KV room."""
from __future__ import annotations

import argparse

GB = 10**9


def register(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("plan", help="split the layers over two hosts' GPUs")
    p.add_argument("model_dir", help="checkpoint folder (config.json is enough)")
    p.add_argument("--host-a", required=True, help="master's GPUs as COUNTxGB, e.g. 8x80")
    p.add_argument("--host-b", required=True, help="worker's GPUs as COUNTxGB, e.g. 8x141")
    p.add_argument("--fp8", default="native", choices=("native", "dequantize"))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--reserve-gb", type=float, default=4.0,
                   help="GB each GPU keeps for activations and the CUDA context (default 4)")
    p.set_defaults(run=run)


def parse_host(text: str, reserve_gb: float, flag: str):
    from engine.split_plan import Host

    try:
        count, size = text.lower().split("x")
        return Host(int(count), int(float(size) * GB), int(reserve_gb * GB))
    except ValueError as e:
        raise ValueError(f"{flag} must be COUNTxGB (e.g. 8x80) with GB > --reserve-gb, "
                         f"got {text!r} ({e})") from None


def run(args) -> int:
    from engine.checkpoint_plan import footprint
    from engine.split_plan import plan_split

    fp = footprint(args.model_dir, args.dtype)
    hosts = (parse_host(args.host_a, args.reserve_gb, "--host-a"),
             parse_host(args.host_b, args.reserve_gb, "--host-b"))
    plan = plan_split(fp, *hosts, native=args.fp8 == "native")
    mode = "FP8 native" if plan.native and fp.fp8 else f"{args.dtype} (dequantized)" if fp.fp8 \
        else args.dtype
    print(f"split k = {plan.k}: master runs layers [0, {plan.k}), worker [{plan.k}, "
          f"{len(fp.layers)}); weights {mode}")
    print(f"bytes read per decode step: master {plan.step_bytes[0] / GB:.1f} GB, "
          f"worker {plan.step_bytes[1] / GB:.1f} GB")
    for name, gpus in zip(("master", "worker"), plan.hosts):
        for i, g in enumerate(gpus):
            print(f"  {name} cuda:{i}  layers [{g.layers[0]}, {g.layers[1]})  weights "
                  f"{g.weight_bytes / GB:.1f} GB  KV room {g.kv_tokens:,} tokens")
    print(f"KV capacity: {plan.kv_tokens:,} tokens (bf16 latents, the fullest GPU decides)")
    return 0
