"""The tensor-parallel group of one stage: which rank this process is, and its collectives.

A stage of `size` ranks holds 1/size of each attention, MLP and MoE block (engine/sharding.py);
its layers meet in one all-reduce per block. `TPGroup.single()` is the group of one rank,
whose collectives return their input: the TP=1 path never calls torch.distributed.

Collectives run with a timeout (`timeout_s`): a rank that died or hangs fails the step with
RankFailure on the others instead of blocking them forever.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

# NVLink multicast (NVLS / multimem) can put a shared host's GPUs out of service: every rank of
# every stage runs with it off, set by the launcher itself (engine/rank_launcher.py).
NO_MULTICAST_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


JOIN_TIMEOUT_S = 300.0  # ranks start torch and join; a loaded host takes its time


class RankFailure(RuntimeError):
    """Another rank of the stage died or stopped answering: the stage cannot run steps."""


def disable_multicast(environ=os.environ) -> None:
    """Force NVLink multicast off in this process (and the children it starts)."""
    environ.update(NO_MULTICAST_ENV)


class TPGroup:
    """rank / size of a stage's tensor-parallel group; size 1 is a no-op group."""

    def __init__(self, rank: int, size: int, group=None, device: torch.device | None = None):
        assert 0 <= rank < size, (rank, size)
        self.rank, self.size = rank, size
        self.group = group  # a torch.distributed process group; None when size == 1
        self.device = device or torch.device("cpu")

    @classmethod
    def single(cls, device: torch.device | None = None) -> "TPGroup":
        return cls(0, 1, None, device)

    @classmethod
    def join(cls, rank: int, size: int, *, init_method: str, device: torch.device,
             timeout_s: float) -> "TPGroup":
        """Join the stage's group (NCCL on CUDA devices, gloo on the CPU); blocks until all ranks
        joined or timeout_s passed."""
        disable_multicast()
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                                    timeout=datetime.timedelta(seconds=max(timeout_s, JOIN_TIMEOUT_S)),
                                    device_id=device if device.type == "cuda" else None)
            # the steps' group: the short timeout (joining waits for every rank's imports)
            group = dist.new_group(list(range(size)), timeout=datetime.timedelta(seconds=timeout_s))
        except Exception as e:  # the store timed out or a peer vanished while joining
            raise RankFailure(f"rank {rank} of {size} could not join the stage's group ({e})") from e
        return cls(rank, size, group, device)

    @property
    def is_single(self) -> bool:
        return self.size == 1

    def shard_range(self, total: int) -> tuple[int, int]:
        """[start, stop) of this rank's equal share of `total` (callers validated divisibility)."""
        assert total % self.size == 0, f"{total} does not split over {self.size} ranks"
        per = total // self.size
        return self.rank * per, (self.rank + 1) * per

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the ranks, in place; x itself back."""
        if self.size > 1:
            self._run(dist.all_reduce, x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """[..., n] on every rank -> [..., size * n], rank order along the last dim."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self._run(dist.all_gather, parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def broadcast_(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's x on every rank (in place)."""
        if self.size > 1:
            self._run(dist.broadcast, x, src=0, group=self.group)
        return x

    def _run(self, op, *args, **kwargs) -> None:
        try:
            op(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as e:  # gloo: peer closed / timed out
            raise RankFailure(f"rank {self.rank} of {self.size}: {op.__name__} failed ({e})") from e

    def close(self) -> None:
        """Leave the group (the process may join a new one afterwards)."""
        if self.group is not None and dist.is_initialized():
            dist.destroy_process_group()
        self.group = None
