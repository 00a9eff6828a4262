"""N clients streaming completions through the VIP, retrying as a real client would, and a
probe that starts a one-token request on a fresh connection every 50 ms.

Run as its own process (inside the lab's client namespace, or on any machine that reaches a
real pair's VIP): `python -m duet.drill.load --url URL --model NAME --clients N --out FILE`.
Every attempt is one JSON line in FILE (monotonic times: the machine's clock, shared with
the drill process); SIGTERM or SIGINT stops it after the attempts in flight.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import httpx

BACKOFF_FIRST_S = 0.05  # then doubling, like the OpenAI SDK's retries but faster
BACKOFF_MAX_S = 0.25  # an eager client: the figures measure the system, not the backoff
RETRY_AFTER_MAX_S = 1.0  # the server's Retry-After is honoured up to this


async def attempt(client: httpx.AsyncClient, url: str, body: dict,
                  keep_gaps: bool = False) -> dict:
    """One streamed completion: ok only with status 200, tokens and the final [DONE]. Keeps
    its text and its longest wait for a token (`max_gap_s`, ending at `gap_end`): a stream
    rebuilt on a restarted worker pauses there. `keep_gaps`: every wait between two token
    events too (`gaps_s`, for inter-token latency), and the server's `usage` if it sends one."""
    rec: dict = {"start": time.monotonic(), "ok": False, "tokens": 0, "text": "",
                 "max_gap_s": 0.0}
    if keep_gaps:
        rec["gaps_s"] = []
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            rec["status"] = resp.status_code
            if resp.status_code != 200:
                await resp.aread()
                rec["retry_after_s"] = float(resp.headers.get("retry-after", 0) or 0)
            else:
                async for line in resp.aiter_lines():
                    if line == "data: [DONE]":
                        rec["ok"] = rec["tokens"] > 0
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                        if "error" in event:  # not the raw line: a token's text may say "error"
                            rec["error"] = "sse error event"
                            break
                        _token(rec, event)
    except httpx.HTTPError as e:
        rec["error"] = type(e).__name__
    rec["end"] = time.monotonic()
    return rec


def _token(rec: dict, event: dict) -> None:
    now = time.monotonic()
    if event.get("usage") and not event.get("choices"):  # stream_options.include_usage
        rec["usage"] = event["usage"]
        return
    gap_s = now - rec.get("last_token", rec["start"])
    if "gaps_s" in rec and rec["tokens"]:
        rec["gaps_s"].append(round(gap_s, 5))
    if gap_s > rec["max_gap_s"]:  # the wait for the first token counts too
        rec["max_gap_s"], rec["gap_end"] = round(gap_s, 4), now
    rec["tokens"] += 1
    rec["text"] += "".join(c.get("text") or "" for c in event.get("choices", []))
    rec.setdefault("first_token", now)
    rec["last_token"] = now


# A streaming client keeps its connection and waits up to 3 s for the next token: a stream
# in flight on a host that died ends only with that timeout, as it would for a real client.
CLIENT_TIMEOUT = httpx.Timeout(connect=0.5, read=3.0, write=1.0, pool=1.0)
# The probe starts a one-token request on a fresh connection every PROBE_EVERY_S, whatever
# became of the earlier ones: it sees the first moment the VIP serves again, which a client
# stuck in a dead stream (or a dead probe) cannot.
PROBE_TIMEOUT = httpx.Timeout(connect=0.5, read=2.0, write=0.5, pool=0.5)
PROBE_EVERY_S = 0.05


def _record(out, rec: dict, **ids) -> None:
    out.write(json.dumps(rec | ids) + "\n")
    out.flush()


async def one_client(index: int, url: str, body: dict, out, stop: asyncio.Event,
                     read_timeout_s: float = CLIENT_TIMEOUT.read) -> None:
    timeout = CLIENT_TIMEOUT.as_dict() | {"read": read_timeout_s}
    async with httpx.AsyncClient(timeout=httpx.Timeout(**timeout), trust_env=False) as client:
        request = 0
        while not stop.is_set():
            request += 1
            backoff_s = BACKOFF_FIRST_S
            for number in range(1, 10**6):
                rec = await attempt(client, url, body)
                _record(out, rec, client=index, request=request, attempt=number)
                if rec["ok"] or stop.is_set():
                    break
                await asyncio.sleep(min(max(backoff_s, rec.get("retry_after_s", 0)),
                                        RETRY_AFTER_MAX_S))
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)


async def probe(url: str, body: dict, out, stop: asyncio.Event) -> None:
    limits = httpx.Limits(max_keepalive_connections=0)  # every probe dials the VIP anew
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, limits=limits, trust_env=False) as c:
        async def one(number: int) -> None:
            _record(out, await attempt(c, url, body), client="probe", request=number, attempt=1)

        running: set[asyncio.Task] = set()
        number = 0
        while not stop.is_set():
            number += 1
            task = asyncio.create_task(one(number))
            running.add(task)
            task.add_done_callback(running.discard)
            await asyncio.sleep(PROBE_EVERY_S)
        await asyncio.gather(*running, return_exceptions=True)


async def main_async(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    body = {"model": args.model, "prompt": "The drill", "max_tokens": args.max_tokens,
            "temperature": 0, "stream": True}
    with open(args.out, "a") as out:
        await asyncio.gather(probe(args.url, dict(body, max_tokens=1), out, stop),
                             *(one_client(i, args.url, body, out, stop, args.read_timeout_s)
                               for i in range(args.clients)))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m duet.drill.load", description=__doc__)
    p.add_argument("--url", required=True, help="the API through the VIP, http://VIP:PORT")
    p.add_argument("--model", required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--out", required=True, help="JSON lines, one per attempt")
    p.add_argument("--read-timeout-s", type=float, default=CLIENT_TIMEOUT.read,
                   help="a stream waits this long for its next byte (longer than a pause)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
