"""Mutual TLS admits any certificate the client CA signed; this narrows it to named clients.

With `tls_client_names` set, a Pipeline call whose client certificate has none of those names
as its subject CN or among its subject alternative names is refused with PERMISSION_DENIED
as the handler starts (the health service stays open to any verified client).
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
    """The Pipeline handlers ask it first: only listed certificate names get through."""

    def __init__(self, allowed: tuple[str, ...]):
        self.allowed = frozenset(allowed)

    def refusal(self, context) -> tuple[grpc.StatusCode, str] | None:
        """PERMISSION_DENIED unless the client's certificate carries a listed name (any
        client passes when none are listed)."""
        if not self.allowed:
            return None
        names = peer_names(context)
        if names & self.allowed:
            return None
        log.warning("refused %s: certificate names %s are not in tls_client_names",
                    context.peer(), sorted(names) or "(none)")
        return (grpc.StatusCode.PERMISSION_DENIED,
                "this client certificate's name is not allowed on this worker")

    def identity(self, context) -> str:
        """Who may adopt this client's kept sequences (worker/orphans.py): with a name list,
        every listed client (one party: the pair's master and standby); without one, the same
        certificate names ("" for every plaintext or certificate-less client)."""
        if self.allowed:
            return "listed"
        return ",".join(sorted(peer_names(context)))
