"""pipeline_ht*.json (pipeline_gpu.py runs, ht's device calls) and the triton_relay JSONs ->
the tables of bench/gpu/triton_relay.md; run from the repository root:
python -m bench.gpu.render_ht"""
from __future__ import annotations

import json
from pathlib import Path

from bench.worker.triton_relay import render as relay_table

ROOT = Path(__file__).resolve().parents[2]


def level_row(name: str, run: dict, lv: dict, ref: dict | None) -> str:
    b, c = lv["breakdown"], lv["concurrency"]
    step, tail = b["worker_step_ms_mean"], b.get("worker_tail_ms_mean") or 0.0
    cells = [name, str(c), f"{lv['tok_s_per_request_p50']:.1f}",
             f"{lv['tok_s_per_request_p50'] / ref['batch_1']['tok_s']:.2f}×" if ref and c == 1
             else "", f"{lv['aggregate_tok_s']:.0f}", f"{b['hop_ms_mean']:.2f}", f"{step:.2f}",
             f"{tail:.2f}" if tail else "(not counted)", f"{step - tail:.2f}" if tail else "",
             f"{run['ttft_2000_ms_p50']:.0f}" if c == 1 and "ttft_2000_ms_p50" in run else ""]
    return "| " + " | ".join(cells) + " |"


def pipeline_table(p: dict) -> list[str]:
    ref = p.get("in_process")
    head = (f"{p['split']} on one {p['device']}, {p['date']}, {p['cpu_cores']} CPU cores; "
            f"{p['prompt_tokens']}-token prompts, {p['output_tokens']} output tokens, greedy.")
    if ref:
        head += (f" Engine in one process, same call: batch 1 {ref['batch_1']['tok_s']:.1f} "
                 f"tok/s ({ref['batch_1']['step_ms_p50']:.2f} ms).")
    rows = [head, "", "| run | concurrency | tok/s per request p50 | ÷ in-process | aggregate "
            "tok/s | hop ms | worker step ms | tail ms | step − tail (Triton) ms | TTFT 2,000 "
            "tokens ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in p["runs"].items():
        if "error" in run:
            rows.append(f"| {name} | could not run: {run['error'].splitlines()[-1][-200:]} |"
                        + " |" * 8)
            continue
        for lv in run["levels"]:
            rows.append(level_row(name, run, lv, ref))
    return rows


def main() -> None:
    for name in ("pipeline_ht.json", "pipeline_ht2.json"):
        path = ROOT / "bench" / "gpu" / name
        if path.exists():
            print(f"### {name}\n")
            print("\n".join(pipeline_table(json.loads(path.read_text()))) + "\n")
    for name in ("triton_relay.json", "triton_relay_h200.json"):
        path = ROOT / "bench" / "worker" / name
        if path.exists():
            print(f"### {name}\n")
            print(relay_table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
