"""`duet checkpoint ACTION`: look at a checkpoint before loading it.

Each action lives in its own module with `register(subparsers)`; add one by adding its module
to ACTIONS (e.g. a `verify` action).
"""
from __future__ import annotations

import argparse
import importlib

ACTIONS = ("duet.checkpoint_inspect", "duet.checkpoint_split")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoint", help="inspect a checkpoint, plan a two-host split")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ACTIONS:
        importlib.import_module(name).register(actions)
