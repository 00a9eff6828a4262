"""A drill's numbers from the clients' attempts and the VIP's moves; table and JSON.

Times are seconds after the fault. The window is every attempt that ended after the fault.
"""
from __future__ import annotations

import time
from collections import Counter

SPLIT_BRAIN_S = 0.3  # 3 adverts at 0.1 s: two holders for longer is not a handover


def _after(t: float, t0: float | None) -> float | None:
    return None if t0 is None or t is None else round(t - t0, 4)


def _first(attempts: list[dict], since: float) -> float | None:
    ends = [a["end"] for a in attempts if a["ok"] and a["start"] >= since]
    return min(ends) if ends else None


def _counts(attempts: list[dict]) -> dict:
    """Requests of the streaming clients (the probe's are counted apart)."""
    window = [a for a in attempts if a["client"] != "probe"]
    last = {}
    for a in window:  # each client's last request may be cut short by the drill's end
        last[a["client"]] = max(last.get(a["client"], 0), a["request"])
    requests = {(a["client"], a["request"]) for a in window}
    served = {(a["client"], a["request"]) for a in window if a["ok"]}
    lost = {r for r in requests - served if r[1] != last[r[0]]}
    kinds = Counter(str(a.get("status")) if a.get("status") not in (None, 200)
                    else a.get("error", "?") for a in window if not a["ok"])
    return {"attempts": len(window), "succeeded": sum(a["ok"] for a in window),
            "failed": sum(not a["ok"] for a in window),
            "retried": sum(a["attempt"] > 1 for a in window), "lost": len(lost),
            "failures_by_kind": dict(kinds)}


def across_fault(attempts: list[dict], fault: float) -> dict:
    """The streams in flight when the fault struck: did each complete, with the text the
    same request gives uninterrupted (every client asks the same greedy completion: the
    streams that did not span the fault), and how long did they pause (their longest wait
    for a token)?"""
    streams = [a for a in attempts if a["client"] != "probe"]
    spanning = [a for a in streams if a["start"] < fault < a["end"]]
    others = Counter(a.get("text") for a in streams if a["ok"] and a not in spanning)
    reference = others.most_common(1)[0][0] if others else None
    gaps = [a.get("max_gap_s", 0.0) for a in spanning if a.get("gap_end", 0) > fault]
    return {"streams": len(spanning), "completed": sum(a["ok"] for a in spanning),
            "identical": sum(a["ok"] and a.get("text") == reference for a in spanning),
            "pause_s": round(max(gaps), 4) if gaps else None}


def longest_overlap_s(changes: list[tuple[float, list[str]]], end: float) -> float:
    """Longest time both hosts held the VIP. A handover overlaps for a moment (the new
    master adds the VIP, the old one drops it when it hears that master's advert); longer
    than a few adverts would be a split brain."""
    spans = [(t, (changes[i + 1][0] if i + 1 < len(changes) else end)) for i, (t, h)
             in enumerate(changes) if len(h) > 1]
    return round(max((b - a for a, b in spans), default=0.0), 4)


def build_report(scenario, clients: int, fault: float, repair: float | None,
                 changes: list[tuple[float, list[str]]], attempts: list[dict],
                 final: dict) -> dict:
    window = [a for a in attempts if a["end"] >= fault]
    moved = next((t for t, h in changes if t >= fault and h == [scenario.moves_vip_to]), None)
    back = next((t for t, h in changes if repair is not None and t >= repair and h == ["a"]),
                None)
    # "503 fast" while the fault lasts; once the repair starts, loading the worker can
    # starve every process of CPU on a small machine.
    until = repair if repair is not None else float("inf")
    refused = [a["end"] - a["start"] for a in window
               if a.get("status") == 503 and a["start"] < until]
    probes = [a for a in window if a["client"] == "probe"]
    report = {
        "scenario": scenario.name, "what": scenario.what, "clients": clients,
        "fault_at_unix_s": round(time.time() - (time.monotonic() - fault), 3),
        "vip_moves_to": scenario.moves_vip_to,
        "vip_moved_s": _after(moved, fault),
        "first_success_s": _after(_first(attempts, fault), fault),
        "repair_s": _after(repair, fault),
        "vip_back_s": _after(back, fault),
        # After the repair: once the VIP is back on A (or, if it never left, the repair).
        "first_success_after_repair_s": _after(_first(attempts, back or repair), fault)
        if (back or repair) is not None else None,
        "max_vip_holders_at_once": max((len(h) for _, h in changes), default=0),
        "longest_two_holders_s": longest_overlap_s(changes, max((a["end"] for a in attempts),
                                                                default=fault)),
        "vip_changes": [{"t_s": _after(t, fault), "holders": h} for t, h in changes],
        "first_stream_success_s": _after(_first([a for a in attempts
                                                  if a["client"] != "probe"], fault), fault),
        "requests": _counts(window),
        "probes": {"attempts": len(probes), "succeeded": sum(a["ok"] for a in probes)},
        "across_fault": across_fault(attempts, fault),
        "refused_503": len(refused),
        "slowest_503_s": round(max(refused), 4) if refused else None,
        "final": final,
    }
    report["checks"] = _checks(scenario, report)
    report["ok"] = all(report["checks"].values())
    return report


def _checks(scenario, r: dict) -> dict[str, bool]:
    final = r["final"]
    checks = {
        "first success through the VIP after the fault": r["first_success_s"] is not None,
        "no request lost (clients retried until served)": r["requests"]["lost"] == 0,
        f"never two VIP holders for more than {SPLIT_BRAIN_S} s":
            r["longest_two_holders_s"] <= SPLIT_BRAIN_S,
        "one VIP holder at the end": final["vip_holders"] == ["a"],
        "every process healthy at the end": final["healthy"],
    }
    if scenario.moves_vip_to:
        checks[f"VIP moved to host {scenario.moves_vip_to}"] = r["vip_moved_s"] is not None
    if scenario.pauses:
        across = r["across_fault"]
        checks["every stream in flight at the fault completed"] = (
            across["streams"] > 0 and across["completed"] == across["streams"])
        checks["with the text of an uninterrupted run"] = (
            across["identical"] == across["streams"])
    return checks


def format_table(r: dict) -> str:
    def s(v) -> str:
        return "-" if v is None else f"{v:.3f} s"
    q = r["requests"]
    rows = [
        ("scenario", f"{r['scenario']}: {r['what']}"),
        ("clients", str(r["clients"])),
        ("VIP moved", s(r["vip_moved_s"]) + f" (to host {r['vip_moves_to']})"
         if r["vip_moves_to"] else "no (stays on host a, as expected)"),
        ("first success via VIP", s(r["first_success_s"]) + " (any client; streams: "
                                  + s(r["first_stream_success_s"]) + ")"),
        ("repair started", s(r["repair_s"])),
        ("VIP back on host a", s(r["vip_back_s"])),
        ("first success after that", s(r["first_success_after_repair_s"])),
        ("stream attempts", f"{q['attempts']}: {q['succeeded']} succeeded, {q['failed']} failed, "
                     f"{q['retried']} retries, {q['lost']} lost"),
        ("failures", ", ".join(f"{k} x{v}" for k, v in q["failures_by_kind"].items()) or "none"),
        ("streams across the fault", "{streams}: {completed} completed, {identical} with the "
         "usual text".format(**r["across_fault"]) + f", paused {s(r['across_fault']['pause_s'])}"),
        ("503s before the repair", f"{r['refused_503']}, slowest {s(r['slowest_503_s'])}"),
        ("two VIP holders", f"at most {r['longest_two_holders_s']:.3f} s at a time"),
        ("final VIP holders", ", ".join(r["final"]["vip_holders"]) or "nobody"),
        ("final processes", ", ".join(f"{k} {v}" for k, v in r["final"]["processes"].items())),
    ]
    rows += [(("ok" if ok else "FAILED"), name) for name, ok in r["checks"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + \
        f"\n{'drill ' + ('passed' if r['ok'] else 'FAILED'):<{width}}"
