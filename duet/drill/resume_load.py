"""Clients that resume their streams (master/resume_client.py) through the VIP: one long
greedy completion each, reconnecting with Last-Event-ID when the stream breaks.

Run as its own process (inside the lab's client namespace, or anywhere that reaches the VIP):
`python -m duet.drill.resume_load --url URL --model NAME --clients N --max-tokens M --out FILE`.
Each client writes a JSON line when its first chunk arrives and one when it ends (its text,
how many times it reconnected, whether it completed); monotonic times, as duet.drill.load.
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import httpx

from master.resume_client import ResumingStream

# A stream on a host that died ends only with the read timeout, as for duet.drill.load.
CLIENT_TIMEOUT = httpx.Timeout(connect=0.5, read=3.0, write=1.0, pool=1.0)


def prompt(index: int) -> str:
    return f"Resuming drill stream {index} begins:"


def one_client(index: int, args: argparse.Namespace, out, lock: threading.Lock) -> None:
    body = {"model": args.model, "prompt": prompt(index), "max_tokens": args.max_tokens,
            "temperature": 0}

    def record(**fields) -> None:
        with lock:
            out.write(json.dumps({"client": index, "time": time.monotonic(), **fields}) + "\n")
            out.flush()

    with httpx.Client(timeout=CLIENT_TIMEOUT, trust_env=False) as http:
        stream = ResumingStream(args.url, body, path="/v1/completions", client=http,
                                max_attempts=200, backoff_s=0.05, max_backoff_s=0.25)
        text, error = [], ""
        try:
            for chunk in stream:
                if not text:
                    record(event="first")
                if "error" in chunk:
                    error = chunk["error"].get("message", "error event")
                    break
                text.append(chunk["choices"][0]["text"])
        except Exception as e:  # reported, not raised: the drill counts it
            error = f"{type(e).__name__}: {e}"
        record(event="done", ok=not error, error=error, text="".join(text),
               reconnects=stream.reconnects, request_id=stream.request_id)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m duet.drill.resume_load", description=__doc__)
    p.add_argument("--url", required=True, help="the API through the VIP, http://VIP:PORT")
    p.add_argument("--model", required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--out", required=True, help="JSON lines: first chunk and end per client")
    args = p.parse_args()
    lock = threading.Lock()
    with open(args.out, "a") as out:
        threads = [threading.Thread(target=one_client, args=(i, args, out, lock))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


if __name__ == "__main__":
    main()
