"""Hidden states through the reused host buffers arrive bit for bit, also while several
copies are outstanding (a buffer is never handed out twice)."""
import pytest
import torch

from engine.host_staging import DeviceToHost, HostToDevice

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_for_bit_with_copies_outstanding(device, dtype):
    to_host, to_device = DeviceToHost(torch.device(device)), HostToDevice(torch.device(device))
    tensors = [torch.randn(rows, 48, device=device).to(dtype) for rows in (3, 700, 1)]
    copies = [to_host.start(t) for t in tensors]  # all three in flight before any is read
    if device == "cuda":  # the producer reuses its buffer: the copy was queued before
        tensors[0].zero_()
    received = [to_device.put(c.to_bytes(), dtype, list(t.shape)) for c, t in zip(copies, tensors)]
    for got, sent, want_rows in zip(received, tensors, (3, 700, 1)):
        assert got.shape == (want_rows, 48) and got.dtype == dtype
    assert torch.equal(received[1], tensors[1]) and torch.equal(received[2], tensors[2])
    assert received[0].abs().sum() > 0  # the data as it was when the copy was queued


@pytest.mark.parametrize("device", DEVICES)
def test_buffers_are_reused_once_given_back(device):
    to_host = DeviceToHost(torch.device(device))
    x = torch.ones(4, 8, device=device)
    for _ in range(5):
        to_host.start(x).to_bytes()
    outstanding = [to_host.start(x) for _ in range(3)]
    if device == "cuda":  # one buffer served the five sequential copies, three the others
        assert len(to_host.ring.buffers) == 3
    assert all(c.to_bytes() == torch.ones(4, 8).numpy().tobytes() for c in outstanding)


def test_empty_message_gives_an_empty_tensor():
    got = HostToDevice(torch.device("cpu")).put(b"", torch.bfloat16, [0, 16])
    assert got.shape == (0, 16) and got.dtype == torch.bfloat16
