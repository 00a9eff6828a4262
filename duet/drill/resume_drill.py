"""The resumable-streams drill: clients stream long greedy completions through the VIP,
host A crashes mid-stream, the clients reconnect with Last-Event-ID to host B's standby
(which adopts the sequences from the worker), and every stream must end with exactly the
text an uninterrupted run gives. The baseline is the same clients run once before the fault."""
from __future__ import annotations

import json
import time
from pathlib import Path

from duet.drill.runner import read_attempts
from duet.drill.scenarios import Scenario

LOAD_MODULE = "duet.drill.resume_load"


def _run_load(target, out: Path, clients: int, max_tokens: int):
    out.unlink(missing_ok=True)
    return target.start_load(out, clients, max_tokens, module=LOAD_MODULE)


def _wait(what: str, done, load, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if load.poll() is not None and not done():
            raise RuntimeError(f"drill: the clients exited before {what}: "
                               f"{load.stderr.read().decode()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: no {what} within {timeout_s:.0f} s")
        time.sleep(0.05)


def _ends(path: Path) -> dict[int, dict]:
    return {r["client"]: r for r in read_attempts(path) if r["event"] == "done"}


def run_resume_drill(target, scenario: Scenario, attempts_file: Path, clients: int = 4,
                     max_tokens: int = 200, timeout_s: float = 120.0) -> dict:
    target.wait_healthy(timeout_s)
    baseline_file = attempts_file.with_suffix(".baseline.jsonl")
    load = _run_load(target, baseline_file, clients, max_tokens)
    load.wait(timeout_s)
    baseline = _ends(baseline_file)
    load = _run_load(target, attempts_file, clients, max_tokens)
    try:
        _wait("first chunk of every stream", lambda: sum(
            r["event"] == "first" for r in read_attempts(attempts_file)) >= clients,
            load, timeout_s)
        fault = scenario.inject(target)
        if scenario.moves_vip_to:
            target.wait_vip_on(scenario.moves_vip_to, timeout_s)
        load.wait(timeout_s)
    finally:
        if load.poll() is None:
            load.kill()
    ends = _ends(attempts_file)
    repair = scenario.repair(target)
    target.wait_healthy(timeout_s)
    return _report(scenario, clients, fault, repair, baseline, ends, target.final_state())


def _report(scenario, clients, fault, repair, baseline, ends, final) -> dict:
    completed = [c for c, r in ends.items() if r["ok"]]
    identical = [c for c in completed if baseline.get(c, {}).get("text") == ends[c]["text"]]
    checks = {
        "every baseline stream completed": sum(r["ok"] for r in baseline.values()) == clients,
        "every stream completed after the fault": len(completed) == clients,
        "every stream's text equals the uninterrupted run's": len(identical) == clients,
        "the streams resumed (reconnected) rather than never broke":
            any(r["reconnects"] for r in ends.values()),
        "one VIP holder at the end": final["vip_holders"] == ["a"],
    }
    return {"scenario": scenario.name, "what": scenario.what, "clients": clients,
            "completed": len(completed), "identical": len(identical),
            "reconnects": {c: r["reconnects"] for c, r in sorted(ends.items())},
            "last_end_s": max((r["time"] - fault for r in ends.values()), default=None),
            "errors": {c: r["error"] for c, r in ends.items() if r["error"]},
            "repair_s": repair - fault if repair else None, "final": final,
            "checks": checks, "ok": all(checks.values())}


def format_resume_table(r: dict) -> str:
    rows = [("scenario", f"{r['scenario']}: {r['what']}"),
            ("streams", str(r["clients"])),
            ("completed", f"{r['completed']} of {r['clients']}"),
            ("identical text", f"{r['identical']} of {r['clients']}"),
            ("reconnects", json.dumps(r["reconnects"])),
            ("last stream ended", "-" if r["last_end_s"] is None
             else f"{r['last_end_s']:.3f} s after the fault"),
            ("errors", json.dumps(r["errors"]) if r["errors"] else "none"),
            ("final VIP holders", ", ".join(r["final"]["vip_holders"]) or "nobody")]
    rows += [(("ok" if ok else "FAILED"), name) for name, ok in r["checks"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + \
        f"\n{'drill ' + ('passed' if r['ok'] else 'FAILED'):<{width}}"
