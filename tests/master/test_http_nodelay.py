"""The API's connections send each streamed chunk at once: its listening socket gives the
connections uvicorn accepts TCP_NODELAY (asyncio sets it only on sockets that say TCP).
Without it every SSE chunk after the first of a response waited for the client's ACK of the
one before, which clients delay up to 40 ms: on a keep-alive connection the first tokens of a
stream arrived ~40 ms late and together (bench/gpu/pipeline_notes.md, session 8)."""
from __future__ import annotations

import asyncio
import socket

import pytest

from master.main import _bind


async def _accepted_nodelay(host: str) -> int:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    # how uvicorn serves the socket master.main binds: loop.create_server(sock=...)
    server = await asyncio.start_server(on_connect, sock=_bind(host, 0))
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(host, port)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()


def test_connections_accepted_by_the_api_send_small_writes_at_once():
    assert asyncio.run(_accepted_nodelay("127.0.0.1")) != 0


def test_so_do_ipv6_connections():
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    assert asyncio.run(_accepted_nodelay("::1")) != 0
