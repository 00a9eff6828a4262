"""Resumable streams on the tail (worker/orphans.py), in process with a fake clock: a broken
stream's sequence is kept for another stream of the same client identity to adopt, goes on
with its own tokens and seeded generator, and is freed when nobody adopts it in time."""
from __future__ import annotations

import grpc
import pytest

from engine.sampling_params import SamplingParams
from pipeline_driver import KV_CACHE_BYTES, SPLIT, result_of
from proto import pipeline_pb2 as pb
from proto.convert import params_to_proto, tensor_to_proto
from worker.client_names import ClientNames
from worker.orphans import stream_name
from worker.tail import TailRunner

PROMPT = list(range(3, 23))
SEEDED = SamplingParams(temperature=1.0, top_k=8, seed=7)
GRACE_S = 5.0


class Clock:
    def __init__(self):
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tail(ckpt, clock) -> TailRunner:
    return TailRunner.load(str(ckpt), SPLIT, dtype="float32", device="cpu",
                           kv_cache_bytes=KV_CACHE_BYTES, block_size=16, idle_timeout_s=300.0,
                           clock=clock, orphan_grace_s=GRACE_S)


class Driver:
    """One API's stream on the in-process tail, with the test's head."""

    def __init__(self, tail: TailRunner, head, stream: str):
        self.tail, self.head, self.stream, self.step_id = tail, head, stream, 0

    def step(self, seqs: list[pb.SeqStep], chunks=()) -> pb.StepReply:
        self.step_id += 1
        request = pb.StepRequest(step_id=self.step_id, seqs=seqs)
        if chunks:
            request.hidden.CopyFrom(tensor_to_proto(self.head.hidden(list(chunks))))
        return self.tail.step(self.stream, request)

    def decode(self, seq_id: str, token: int, pos: int, head_id: str = "") -> int:
        reply = self.step([pb.SeqStep(seq_id=seq_id, start_pos=pos, num_tokens=1, sample=True)],
                          [(head_id or seq_id, pos, [token])])
        return result_of(reply, seq_id).sampled.token_id

    def start(self, seq_id: str, resume_key: str) -> int:
        seq = pb.SeqStep(seq_id=seq_id, start_pos=0, num_tokens=len(PROMPT), sample=True,
                         resume_key=resume_key)
        seq.params.CopyFrom(params_to_proto(SEEDED))
        reply = self.step([seq], [(seq_id, 0, PROMPT)])
        return result_of(reply, seq_id).sampled.token_id

    def adopt(self, seq_id: str, resume_key: str) -> pb.SeqResult:
        reply = self.step([pb.SeqStep(seq_id=seq_id, adopt=True, resume_key=resume_key)])
        return result_of(reply, seq_id)


def test_adopted_sequence_goes_on_exactly_and_only_for_the_same_client(tail, head):
    dead = Driver(tail, head, stream_name(1, "api-pair"))
    first = dead.start("x", "K")
    second = dead.decode("x", first, len(PROMPT))
    tail.drop_stream(dead.stream)  # its API died: kept, not released
    assert tail.status().kv_used_tokens > 0

    intruder = Driver(tail, head, stream_name(2, "someone-else"))
    refused = intruder.adopt("x", "K")
    assert refused.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert len(tail.table.orphans) == 1  # still kept for its rightful owner

    standby = Driver(tail, head, stream_name(3, "api-pair"))
    assert standby.adopt("x2", "wrong key").error.code == grpc.StatusCode.NOT_FOUND.value[0]
    adopted = standby.adopt("x2", "K").adopted
    assert list(adopted.output_ids) == [first, second]
    assert adopted.next_pos == len(PROMPT) + 1  # `second` is sampled, not yet fed
    # the head still holds "x" here; the worker continues with its own generator state
    third = standby.decode("x2", second, adopted.next_pos, head_id="x")

    reference = Driver(tail, head, stream_name(4, "api-pair"))
    head.release("x")
    r1 = reference.start("x", "")
    r2 = reference.decode("x", r1, len(PROMPT))
    assert [r1, r2, reference.decode("x", r2, len(PROMPT) + 1)] == [first, second, third]
    head.release("x")
    tail.drop_stream(reference.stream)
    # The standby's host crashed without a FIN: its stream still looks open, yet a client
    # resuming through another API of the pair takes the sequence over.
    back = Driver(tail, head, stream_name(5, "api-pair"))
    assert list(back.adopt("x3", "K").adopted.output_ids) == [first, second, third]
    late = standby.step([pb.SeqStep(seq_id="x2", start_pos=adopted.next_pos + 1,
                                    num_tokens=1, sample=True)], [("late", 0, [third])])
    assert result_of(late, "x2").error.code == grpc.StatusCode.NOT_FOUND.value[0]
    head.release("late")
    tail.drop_stream(standby.stream)
    tail.drop_stream(back.stream)  # kept again (it has a resume key)
    assert len(tail.table.orphans) == 1


def test_a_sequence_nobody_adopts_is_freed_after_the_grace_period(tail, head, clock):
    dead = Driver(tail, head, stream_name(1, ""))
    dead.start("y", "Y")
    dead.start("z", "")  # no resume key: released with the stream, as before
    head.release("y")
    head.release("z")
    tail.drop_stream(dead.stream)
    assert len(tail.table.orphans) == 1 and tail.status().kv_used_tokens > 0
    clock.now_s += GRACE_S / 2
    tail.expire_idle()
    assert tail.status().kv_used_tokens > 0
    clock.now_s += GRACE_S
    tail.expire_idle()
    assert len(tail.table.orphans) == 0 and tail.status().kv_used_tokens == 0


class PeerContext:
    """What ClientNames reads of a gRPC call: the verified certificate's names."""

    def __init__(self, *names: str):
        self.names = names

    def auth_context(self) -> dict:
        return {"x509_common_name": [n.encode() for n in self.names]} if self.names else {}


def test_who_may_adopt_follows_the_worker_tls_name_rules():
    pair = ClientNames(("master.internal", "standby.internal"))
    assert pair.identity(PeerContext("master.internal")) == pair.identity(
        PeerContext("standby.internal"))  # the listed pair is one party: failover works
    any_signed = ClientNames(())
    assert any_signed.identity(PeerContext("master")) != any_signed.identity(
        PeerContext("intruder"))  # no list: only the same certificate names
    assert any_signed.identity(PeerContext()) == ""  # plaintext clients are one party
