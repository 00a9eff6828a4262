"""`duet <command>`: each command lives in its own module; this file only dispatches.

A command module has `register(subparsers)`, which adds its parser and sets `run=` to a
function taking the parsed args and returning an exit code. Keep module-level imports light:
every module is imported to build `--help`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Add a command by adding its module here.
COMMANDS = ("duet.cmd_tiny_model", "duet.cmd_master", "duet.serve", "duet.cmd_worker", "duet.cmd_vrrp",
            "duet.cmd_checkpoint", "duet.lab.cmd",
            "duet.drill.cmd", "duet.load.cmd")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duet", description="Serve a DeepSeek-family model across two hosts."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError: one line, no traceback
        print(f"duet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
