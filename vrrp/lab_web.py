"""The lab's stand-in for an API: static files, and /ready as duet's API answers it.

`python -m vrrp.lab_web PORT ROOT`: /ready is 200 while ROOT/ready exists, 503 with
`{"ready": false, "draining": true}` while ROOT/draining exists (an API after SIGTERM), else
404; any other path is a file under ROOT.
"""
from __future__ import annotations

import functools
import json
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        root = Path(self.directory)
        if self.path == "/ready" and not (root / "ready").exists() and (
                root / "draining").exists():
            body = json.dumps({"ready": False, "reason": "draining", "draining": True}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # quiet, as `python -m http.server` > /dev/null was
        pass


def main() -> None:
    port, root = int(sys.argv[1]), sys.argv[2]
    ThreadingHTTPServer(("0.0.0.0", port),
                        functools.partial(Handler, directory=root)).serve_forever()


if __name__ == "__main__":
    main()
