"""Hidden states between a GPU and the wire through reused page-locked host buffers.

A pageable `.cpu()` of a CUDA tensor blocks the host until the device is idle and copies
twice (device -> driver staging -> pageable memory). Here the copy goes once into a pinned
buffer, queued on the producing stream (so a CUDA graph's static output buffer is read
before the next replay overwrites it) and fenced by an event: the host launches the next
micro-batch while this one's bytes are still on their way, and waits only when it needs
them. Host -> device goes the same way in reverse on the receiving stage.

Buffers are kept and reused: as many as copies outstanding at once (the micro-batches in
flight), each grown to the largest step it carried. On a CPU stage nothing is pinned and no
event is recorded.
"""
from __future__ import annotations

import numpy as np
import torch


class _Ring:
    """Growable uint8 host buffers (pinned when `pinned`), each fenced by an event; a slot is
    handed out again only once given back, and its last copy is waited for before reuse."""

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self.buffers: list[torch.Tensor] = []
        self.events: list[torch.cuda.Event | None] = []
        self.free: list[int] = []

    def take(self, nbytes: int) -> tuple[int, torch.Tensor]:
        """An idle slot with at least nbytes: (slot, its first nbytes)."""
        if not self.free:
            self.buffers.append(torch.empty(0, dtype=torch.uint8))
            self.events.append(None)
            self.free.append(len(self.buffers) - 1)
        slot = self.free.pop()
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # its last copy: normally long done
            self.events[slot] = None
        if self.buffers[slot].numel() < nbytes:
            size = 1 << max(nbytes - 1, 4095).bit_length()  # powers of two from 4 KiB: few regrowths
            self.buffers[slot] = torch.empty(size, dtype=torch.uint8, pin_memory=self.pinned)
        return slot, self.buffers[slot][:nbytes]

    def give(self, slot: int) -> None:
        self.free.append(slot)

    def fence(self, slot: int, device: torch.device) -> torch.cuda.Event | None:
        """An event after the copy just queued on the device's current stream (None on a CPU
        stage)."""
        if not self.pinned:
            return None
        event = self.events[slot] = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        return event


class HostCopy:
    """A tensor on its way to the host; `to_bytes()` waits for it and frees its buffer."""

    def __init__(self, host: torch.Tensor, event: torch.cuda.Event | None,
                 ring: _Ring | None = None, slot: int = -1):
        self.host, self._event, self._ring, self._slot = host, event, ring, slot

    def done(self) -> bool:
        return self._event is None or self._event.query()

    def to_bytes(self) -> bytes:
        """The tensor's raw little-endian bytes (the one host copy after the device's)."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        data = self.host.reshape(-1).view(torch.uint8).numpy().tobytes()  # bfloat16 too
        if self._ring is not None:
            self._ring.give(self._slot)
            self._ring = None
        return data


class DeviceToHost:
    """Starts device -> host copies into pinned buffers without blocking the host."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ring = _Ring(pinned=device.type == "cuda")

    def start(self, tensor: torch.Tensor) -> HostCopy:
        """Queue the copy of `tensor` (any shape) after the work that produces it. A CPU
        tensor is not copied: read it (to_bytes) before its buffer is written again."""
        tensor = tensor.detach()
        if tensor.device.type != "cuda":
            return HostCopy(tensor.contiguous(), None)
        nbytes = tensor.numel() * tensor.element_size()
        slot, raw = self.ring.take(nbytes)
        host = raw.view(tensor.dtype).view(tensor.shape)
        host.copy_(tensor, non_blocking=True)
        return HostCopy(host, self.ring.fence(slot, tensor.device), self.ring, slot)


class HostToDevice:
    """Bytes from the wire to a device tensor through a pinned buffer, without a host wait."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ring = _Ring(pinned=device.type == "cuda")

    def put(self, data, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
        """A new device tensor of `shape` holding `data` (raw little-endian values: bytes, or a
        1-D uint8 tensor such as one received through DLPack)."""
        if len(data) == 0:
            return torch.empty(shape, dtype=dtype, device=self.device)
        tensor = isinstance(data, torch.Tensor)
        slot, raw = self.ring.take(data.numel() if tensor else len(data))
        if tensor:
            raw.copy_(data.reshape(-1))
        else:  # the one host copy: wire bytes -> pinned, by numpy on this thread. torch's copy_
            # may fan 458 KB out over its intra-op threads; on the GPU host, where both stages
            # keep a full pool, up to 28% of the worker's samples sat on it (pipeline.md)
            np.copyto(raw.numpy(), np.frombuffer(data, dtype=np.uint8))
        out = raw.view(dtype).view(shape).to(self.device, non_blocking=True)
        if not self.ring.pinned:
            out = out.clone() if out.data_ptr() == raw.data_ptr() else out  # the ring is reused
        self.ring.fence(slot, out.device)
        self.ring.give(slot)  # reused only after this copy (take() waits for its event)
        return out
