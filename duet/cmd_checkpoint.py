"""`duet checkpoint ACTION`: look at a checkpoint before loading it, or verify its bytes.

Each action lives in its own module with `register(subparsers)`; add one by adding its module
to ACTIONS.
"""
from __future__ import annotations

import argparse
import importlib

ACTIONS = ("duet.checkpoint_inspect", "duet.checkpoint_split", "duet.checkpoint_verify")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "checkpoint", help="inspect a checkpoint, plan a two-host split, verify its bytes")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ACTIONS:
        importlib.import_module(name).register(actions)
