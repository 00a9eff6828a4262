"""Sequences of broken streams, kept for another API to adopt (resumable streams).

When the API that ran a sequence dies (its host crashed, the VIP moved to the standby), its
Step stream breaks. A sequence the API sent a `resume_key` for is then not released but kept
here for `orphan_grace_s`: its KV on the tail, its sampled tokens and its seeded generator.
The standby, resuming the same request for the client (same key: the API derives it from
the request id, the client's key and the body), adopts it with `SeqStep.adopt`, rebuilds only
its head's KV, and decoding continues exactly where the dead API stopped.

Closed by default: only a stream of the same client identity may adopt (`identity_of`: with
`tls_client_names` every listed client is one party, the pair's master and standby; without
it, the same certificate names; plaintext clients are one party). The kept sequences hold at
most `max_tokens` of KV (one stream's share): beyond it the oldest are released, so broken
streams cannot pile up KV. What nobody adopts within the grace period is released.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Protocol, TypeVar


class Orphan(Protocol):
    resume_key: str
    next_pos: int  # KV positions it holds


S = TypeVar("S", bound=Orphan)


def stream_name(number: int, identity: str) -> str:
    """The worker's name of a Step stream: its number and a digest of who opened it."""
    return f"s{number}~{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def identity_of(stream: str) -> str:
    """The client identity digest in a stream name (see stream_name)."""
    return stream.partition("~")[2]


@dataclass
class _Kept(Generic[S]):
    seq: S
    identity: str
    since_s: float


class Orphanage(Generic[S]):
    """Resume key -> a kept sequence, oldest first, until adopted or expired."""

    def __init__(self, grace_s: float, max_tokens: int, clock: Callable[[], float] = time.monotonic):
        self.grace_s, self.max_tokens, self.clock = grace_s, max_tokens, clock
        self._kept: OrderedDict[str, _Kept[S]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, seq: S, stream: str) -> list[S]:
        """Keep `seq` of the broken `stream`; returns what must be released now: `seq` itself
        when it cannot be kept (no resume key, grace 0), or older ones pushed out."""
        if self.grace_s <= 0 or not seq.resume_key:
            return [seq]
        out = [old.seq for old in [self._kept.pop(seq.resume_key, None)] if old is not None]
        self._kept[seq.resume_key] = _Kept(seq, identity_of(stream), self.clock())
        while sum(k.seq.next_pos for k in self._kept.values()) > self.max_tokens:
            out.append(self._kept.popitem(last=False)[1].seq)
        return out

    def take(self, resume_key: str, stream: str) -> S | None:
        """The kept sequence of this key, if `stream`'s client may adopt it (else None, and
        it stays kept for its rightful owner)."""
        kept = self._kept.get(resume_key)
        if kept is None or kept.identity != identity_of(stream):
            return None
        del self._kept[resume_key]
        return kept.seq

    def expired(self) -> list[S]:
        """Remove and return the sequences kept longer than the grace period."""
        cutoff = self.clock() - self.grace_s
        old = [key for key, k in self._kept.items() if k.since_s < cutoff]
        return [self._kept.pop(key).seq for key in old]
