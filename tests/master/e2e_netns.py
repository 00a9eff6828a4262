"""HTTP from inside a network namespace (one the test made), as a client on that host would."""
from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

from vrrp.netns import socket_in_netns


def netns_request(netns: str, method: str, url: str, body: dict | None = None,
                  headers: dict | None = None, timeout_s: float = 30.0) -> tuple[int, dict]:
    """One HTTP request made from inside a network namespace: (status, JSON body or {})."""
    parts = urlsplit(url)
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect((parts.hostname, parts.port))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    conn.sock = sock
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, parts.path, body=payload,
                     headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        text = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, {}

