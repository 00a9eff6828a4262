"""`duet worker --config FILE`: the tail host (layers [k, L), norm, LM head, sampler)."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "worker",
        help="serve the tail of the model to the APIs over gRPC (Triton or in-process)",
        description="Load layers [layer_start, L), the final norm and the LM head, and serve "
        "the Pipeline gRPC service. DUET_WORKER_<FIELD> variables override the file.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="worker TOML file")
    p.add_argument("--write-model-repo", metavar="DIR",
                   help="write the Triton model repository for an existing Triton, then exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from worker.config import WorkerConfig

    try:  # before torch is imported: a bad file fails in a blink, not after seconds of imports
        config = WorkerConfig.from_toml(args.config)
    except ValueError as e:
        print(f"duet worker: {e}", file=sys.stderr)
        return 2
    from worker.main import run_cli

    return run_cli(config, args.write_model_repo)
