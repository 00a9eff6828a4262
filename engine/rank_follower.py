"""Ranks 1..n-1 of a tensor-parallel stage: load this rank's shares, then follow rank 0's steps.

Started by engine/rank_launcher.py (`python -m engine.rank_follower ...`). Rank 0 sends each
step's header over a pipe (op, stage, the step's context on the CPU, the input's shape), then
the input tensor itself through the group's broadcast; both ranks then run the same layers and
meet in their all-reduces. Block tables live on rank 0 only: a follower's KV cache is tensors.

The follower exits when the pipe closes (rank 0 is gone), and on any error (a step it cannot
run would leave the ranks out of step): rank 0 notices, fails the stage and restarts its ranks.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
from multiprocessing.connection import Connection

import torch

from engine.parallel import NO_MULTICAST_ENV, TPGroup
from engine.placement import context_on
from engine.stage import Stage

log = logging.getLogger("duet.engine.rank")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.rank_follower")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--init-method", required=True)  # tcp://127.0.0.1:PORT of rank 0's store
    p.add_argument("--device", required=True)  # this rank's device ("cpu", "cuda:3")
    p.add_argument("--timeout-s", type=float, required=True)
    p.add_argument("--read-fd", type=int, required=True)  # rank 0 -> this rank
    p.add_argument("--write-fd", type=int, required=True)  # this rank -> rank 0
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {args.rank} %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    inbox = Connection(args.read_fd, writable=False)
    outbox = Connection(args.write_fd, readable=False)
    tp = TPGroup.join(args.rank, args.size, init_method=args.init_method,
                      device=torch.device(args.device), timeout_s=args.timeout_s)
    stages: dict[int, Stage] = {}
    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())
        except (EOFError, OSError):  # rank 0 exited: nothing left to follow
            return 0
        if message[0] == "stop":
            return 0
        reply = _handle(message, stages, tp)
        if reply is not None:
            outbox.send_bytes(pickle.dumps(reply))


def _handle(message: tuple, stages: dict[int, Stage], tp: TPGroup):
    """Run one message from rank 0; a reply for the ops rank 0 waits on."""
    op = message[0]
    if op == "forward":
        _, stage_id, ctx, shape, dtype = message
        stage = stages[stage_id]
        inputs = tp.broadcast_(torch.empty(shape, dtype=dtype, device=tp.device))
        stage.run_context(context_on(ctx, tp.device), inputs)
    elif op == "logits":
        _, stage_id, shape, dtype = message
        stages[stage_id].compute_logits(tp.broadcast_(torch.empty(shape, dtype=dtype, device=tp.device)))
    elif op == "load":
        _, stage_id, model_dir, layer_start, layer_end, kwargs = message
        try:
            stages[stage_id] = Stage.load(model_dir, layer_start, layer_end, tp=tp, **kwargs)
        except Exception as e:  # rank 0 fails the same way, or reports ours
            return ("error", stage_id, f"rank {tp.rank}: {e}")
        return ("loaded", stage_id, None)
    elif op == "unload":
        stages.pop(message[1], None)
    elif op == "env":
        return ("env", None, {"pid": os.getpid(), **{k: os.environ.get(k) for k in NO_MULTICAST_ENV}})
    else:
        raise ValueError(f"unknown message {op!r} from rank 0")
    return None


if __name__ == "__main__":
    sys.exit(main())
