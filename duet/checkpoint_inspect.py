"""`duet checkpoint inspect DIR`: parameters, bytes on disk, GPU bytes of a layer range, KV."""
from __future__ import annotations

import argparse

GIB = 2**30


def register(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("inspect", help="sizes of a checkpoint and of a stage of it")
    p.add_argument("model_dir", help="checkpoint folder (config.json is enough)")
    p.add_argument("--layers", default="", help="START:END layer range of a stage (default all)")
    p.add_argument("--dtype", default="bfloat16", help="stage dtype (default bfloat16)")
    p.set_defaults(run=run)


def parse_range(text: str, num_layers: int) -> tuple[int, int]:
    if not text:
        return 0, num_layers
    try:
        start, end = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--layers must be START:END, got {text!r}") from None
    if not 0 <= start < end <= num_layers:
        raise ValueError(f"--layers {text}: the model has layers 0..{num_layers - 1}")
    return start, end


def run(args) -> int:
    from engine.checkpoint_plan import disk_bytes, footprint

    fp = footprint(args.model_dir, args.dtype)
    start, end = parse_range(args.layers, len(fp.layers))
    total, stage = fp.total, fp.stage(start, end)
    disk = disk_bytes(args.model_dir)
    kv = fp.kv_bytes_per_token_layer
    print(f"model            {fp.config.architecture}, {len(fp.layers)} layers, "
          f"{'FP8 block-quantized' if fp.fp8 else 'not FP8'}")
    print(f"parameters       {total.params:,}")
    print(f"bytes on disk    {disk:,} ({disk / GIB:.1f} GiB)" if disk else
          f"bytes on disk    no weight files; as shipped: {total.checkpoint_bytes:,}")
    print(f"stage [{start}, {end})  {stage.params:,} parameters")
    for mode, value in (("fp8 = native", stage.native_bytes if fp.fp8 else None),
                        ("fp8 = dequantize" if fp.fp8 else "on the GPU", stage.dequantized_bytes)):
        if value is not None:
            print(f"  {mode:<17}{value:,} bytes ({value / GIB:.2f} GiB) on the GPU, {args.dtype}")
    print(f"KV cache         {kv:,} bytes per token per layer; {kv * (end - start):,} for the "
          f"stage, {kv * len(fp.layers):,} for the whole model")
    return 0
