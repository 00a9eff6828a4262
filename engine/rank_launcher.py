"""The stage's own process starts and supervises the other ranks of its tensor-parallel group.

This process is rank 0: it serves (gRPC or HTTP), owns the KV block tables, and tells ranks
1..n-1 (engine/rank_follower.py, child processes) each step before running it. Every rank,
this one included, runs with NVLink multicast off (engine.parallel.NO_MULTICAST_ENV), set here,
so that a user's host is safe whatever its environment says.

A rank that dies or stops answering fails the step on rank 0 with RankFailure (a dead process
is seen before the step; a hang, by the collectives' timeout); the owner then `stop()`s every
rank and loads again (worker/tp_executor.py), which starts a fresh group.
"""
from __future__ import annotations

import itertools
import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import torch

from engine.config import ModelConfig
from engine.parallel import NO_MULTICAST_ENV, RankFailure, TPGroup, disable_multicast
from engine.placement import context_on
from engine.sharding import check_divisible
from engine.stage import Stage
from runtime.children import free_port

log = logging.getLogger("duet.engine.rank")
STOP_WAIT_S = 2.0  # a follower told to stop gets this long before it is killed (it holds
#                    nothing that outlives it)


def rank_device(device: str, rank: int) -> torch.device:
    """Rank r's device: "cuda" -> cuda:r, "cuda:4" -> cuda:(4 + r) (one GPU per rank, from the
    stage's first: two stages of TP 4 on one host take cuda:0 and cuda:4), "cpu" -> cpu."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.device("cuda", (dev.index or 0) + rank)
    return dev


@dataclass
class _Follower:
    rank: int
    process: subprocess.Popen
    inbox: Connection  # what it sends us
    outbox: Connection  # what we send it


@dataclass
class RankLauncher:
    """Ranks 1..size-1 of a stage as child processes of this one (rank 0)."""

    size: int
    device: str = "cpu"
    timeout_s: float = 60.0  # collectives and group joining; a hung rank fails a step after it
    load_timeout_s: float = 1800.0
    followers: list[_Follower] = field(default_factory=list)
    tp: TPGroup | None = None
    _ids: itertools.count = field(default_factory=itertools.count)

    def start(self) -> TPGroup:
        """Start the followers and join the group with them; this process is rank 0."""
        disable_multicast()  # before any CUDA / NCCL initialisation of this process
        init_method = f"tcp://127.0.0.1:{free_port()}"
        env = {**os.environ, **NO_MULTICAST_ENV}
        for rank in range(1, self.size):
            self.followers.append(self._spawn(rank, init_method, env))
        try:
            self.tp = TPGroup.join(0, self.size, init_method=init_method,
                                   device=rank_device(self.device, 0), timeout_s=self.timeout_s)
        except RankFailure:
            self.stop()
            raise
        log.info("tensor-parallel group of %d ranks up (pids %s)", self.size,
                 ", ".join(str(f.process.pid) for f in self.followers))
        return self.tp

    def _spawn(self, rank: int, init_method: str, env: dict) -> _Follower:
        to_child, from_parent = os.pipe()[::-1]  # (write end, read end)
        from_child, to_parent = os.pipe()
        cmd = [sys.executable, "-m", "engine.rank_follower", "--rank", str(rank),
               "--size", str(self.size), "--init-method", init_method,
               "--device", str(rank_device(self.device, rank)), "--timeout-s", str(self.timeout_s),
               "--read-fd", str(from_parent), "--write-fd", str(to_parent),
               "--threads", str(torch.get_num_threads())]
        process = subprocess.Popen(cmd, env=env, pass_fds=(from_parent, to_parent))
        os.close(from_parent)
        os.close(to_parent)
        return _Follower(rank, process, Connection(from_child, writable=False),
                         Connection(to_child, readable=False))

    # --- stages ----------------------------------------------------------------------------
    def load(self, model_dir, layer_start: int, layer_end: int, **kwargs) -> Stage:
        """Stage.load on every rank at once; rank 0's Stage comes back, leading the others."""
        check_divisible(ModelConfig.from_dir(model_dir), self.size)  # before starting ranks
        if self.tp is None:
            self.start()
        stage_id = next(self._ids)
        self.send(("load", stage_id, str(model_dir), layer_start, layer_end, kwargs))
        try:
            stage = Stage.load(model_dir, layer_start, layer_end, tp=self.tp, **kwargs)
            replies = self._replies(self.load_timeout_s)
        except BaseException:  # the followers' answers would be out of step: start afresh
            self.stop()
            raise
        for reply in replies:
            if reply[0] == "error":
                raise RankFailure(f"loading layers [{layer_start}, {layer_end}): {reply[2]}")
        stage.leader = Leader(self, stage_id)
        return stage

    def unload(self, stage: Stage) -> None:
        if stage.leader is not None:
            self.send(("unload", stage.leader.stage_id))
            stage.leader = None

    def rank_environments(self) -> list[dict]:
        """Each follower's pid and multicast variables, as that process sees them."""
        self.send(("env",))
        return [reply[2] for reply in self._replies(self.timeout_s)]

    # --- supervision -----------------------------------------------------------------------
    def check(self) -> None:
        """RankFailure naming the first follower that exited."""
        for f in self.followers:
            code = f.process.poll()
            if code is not None:
                raise RankFailure(f"rank {f.rank} of {self.size} (pid {f.process.pid}) "
                                  f"exited with code {code}")

    def send(self, message: tuple) -> None:
        self.check()
        for f in self.followers:
            try:
                f.outbox.send_bytes(pickle.dumps(message))
            except OSError as e:  # BrokenPipeError: it died after the check
                raise RankFailure(f"rank {f.rank} of {self.size}: {e}") from e

    def _replies(self, timeout_s: float) -> list[tuple]:
        """One reply from each follower, in rank order; RankFailure if one dies or is late."""
        deadline_s, out = time.monotonic() + timeout_s, []
        for f in self.followers:
            while not f.inbox.poll(0.2):
                self.check()
                if time.monotonic() > deadline_s:
                    raise RankFailure(f"rank {f.rank} of {self.size} did not answer "
                                      f"within {timeout_s:g} s")
            try:
                out.append(pickle.loads(f.inbox.recv_bytes()))
            except (EOFError, OSError) as e:
                raise RankFailure(f"rank {f.rank} of {self.size}: {e}") from e
        return out

    def stop(self) -> None:
        """Stop the followers (killing those that do not stop) and leave the group."""
        for f in self.followers:
            try:
                f.outbox.send_bytes(pickle.dumps(("stop",)))
            except OSError:
                pass
        for f in self.followers:
            try:
                f.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                f.process.kill()
                f.process.wait()
            f.inbox.close()
            f.outbox.close()
        self.followers.clear()
        if self.tp is not None:
            self.tp.close()
            self.tp = None


@dataclass
class Leader:
    """Rank 0's side of one stage: announces each step to the followers, then broadcasts its
    input tensor (the header goes by pipe, the tensor by the group: NVLink on GPUs)."""

    launcher: RankLauncher
    stage_id: int

    def forward(self, ctx, inputs: torch.Tensor) -> None:
        tp = self.launcher.tp
        x = inputs.to(tp.device)
        self.launcher.send(("forward", self.stage_id, context_on(ctx, torch.device("cpu")),
                            tuple(x.shape), x.dtype))
        tp.broadcast_(x)

    def logits(self, hidden: torch.Tensor) -> None:
        tp = self.launcher.tp
        x = hidden.to(tp.device)
        self.launcher.send(("logits", self.stage_id, tuple(x.shape), x.dtype))
        tp.broadcast_(x)
