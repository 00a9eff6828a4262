"""`duet tiny-model`: write a small random-weight checkpoint for tests and demos."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("duet.tiny_model")

ARCH_CHOICES = ("deepseek_v3", "deepseek_v2", "qwen2", "llama")  # engine.tiny_configs.ARCHS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tiny-model",
        help="write a tiny random-weight checkpoint in the Hugging Face layout",
        description="Write a tiny random-weight checkpoint (sharded safetensors, index, "
        "config, generation_config, real tokenizer with chat template). "
        "Same seed, same bytes.",
    )
    p.add_argument("--arch", required=True, choices=ARCH_CHOICES)
    p.add_argument("out", help="folder to write (created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=4, help="decoder layers (default 4, at least 2)")
    p.add_argument("--fp8", action="store_true", help="FP8 block-quantized weights (deepseek_v3)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.tiny_model import write_tiny_model

    out = write_tiny_model(
        args.arch, args.out, seed=args.seed, num_layers=args.layers, fp8=args.fp8
    )
    log.info("wrote a %d-layer %s checkpoint to %s", args.layers, args.arch, out)
    return 0
