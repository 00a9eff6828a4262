"""`duet checkpoint <action>`: commands about a checkpoint folder, one module per action.

Each action module has `register(subparsers)` like the top-level commands (see duet/cli.py).
"""
from __future__ import annotations

# Add an action by adding its module here.
ACTIONS = ("duet.checkpoint_verify",)


def register(subparsers) -> None:
    import importlib

    p = subparsers.add_parser("checkpoint", help="check a checkpoint folder",
                              description=__doc__.splitlines()[0])
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name in ACTIONS:
        importlib.import_module(name).register(actions)
