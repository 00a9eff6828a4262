"""Mutual TLS admits any certificate the client CA signed; this narrows it to named clients.

With `tls_client_names` set, a Pipeline call whose client certificate has none of those names
as its subject CN or among its subject alternative names is refused with PERMISSION_DENIED
before the handler runs (the health service stays open to any verified client).
"""
from __future__ import annotations

import logging

import grpc

log = logging.getLogger(__name__)
NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")  # gRPC's auth context keys


def peer_names(context) -> set[str]:
    """The names the client's verified certificate carries (empty without one)."""
    auth = context.auth_context() or {}
    return {v.decode(errors="replace") for key in NAME_KEYS for v in auth.get(key, [])}


class ClientNames:
    """Wraps the Pipeline handlers so that only listed certificate names get through."""

    def __init__(self, allowed: tuple[str, ...]):
        self.allowed = frozenset(allowed)

    async def _check(self, context) -> None:
        names = peer_names(context)
        if self.allowed and not names & self.allowed:
            log.warning("refused %s: certificate names %s are not in tls_client_names",
                        context.peer(), sorted(names) or "(none)")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "this client certificate's name is not allowed on this worker")

    def unary(self, behavior):
        if not self.allowed:
            return behavior

        async def guarded(request, context):
            await self._check(context)
            return await behavior(request, context)

        return guarded

    def stream(self, behavior):
        if not self.allowed:
            return behavior

        async def guarded(requests, context):
            await self._check(context)
            async for reply in behavior(requests, context):
                yield reply

        return guarded
