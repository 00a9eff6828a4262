"""pipeline.json of pipeline_gpu.py and triton_cure*.json -> the tables of pipeline.md;
run from the repository root: python -m bench.gpu.render_pipeline"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def level_rows(name: str, run: dict) -> list[str]:
    if "error" in run:
        return [f"| {name} | {run['executor']} | {run['max_inflight_batches']} | could not run: "
                f"{run['error'].splitlines()[-1][-200:]} | | | | | | | | |"]
    rows = []
    for lv in run["levels"]:
        b = lv["breakdown"]
        rows.append(f"| {name} | {run['executor']} | {run['max_inflight_batches']} | "
                    f"{lv['concurrency']} | {lv['aggregate_tok_s']:.0f} | "
                    f"{lv['tok_s_per_request_p50']:.1f} | {lv['ttft_ms_p50']:.0f} | {b['steps']} | "
                    f"{b['tokens_per_worker_step']:.1f} | {b['hop_ms_mean']:.1f} | "
                    f"{b['worker_step_ms_mean']:.1f} | {b.get('worker_tail_ms_mean', 0):.1f} |")
    if "ttft_2000_ms_p50" in run:
        rows.append(f"| {name} | TTFT of a 2,000-token prompt | | | | | "
                    f"{run['ttft_2000_ms_p50']:.0f} | | | | | |")
    return rows


def pipeline_table(p: dict) -> list[str]:
    ref = p["in_process"]
    rows = [f"Pipeline ({p['split']} on one {p['device']}, {p['date']}; {p['prompt_tokens']}-token "
            f"prompts, {p['output_tokens']} output tokens, greedy; openai clients in up to 4 "
            f"processes). Engine in one process, same run: batch 1 "
            f"{ref['batch_1']['tok_s']:.0f} tok/s ({ref['batch_1']['step_ms_p50']:.2f} ms), "
            f"batch 64 {ref['batch_64']['tok_s']:.0f} tok/s.", "",
            "| run | executor | in flight | concurrency | aggregate tok/s | tok/s per request p50 "
            "| TTFT p50 ms | steps | tokens / worker step | hop ms (mean) | worker step ms (mean) "
            "| tail ms (mean) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in p["runs"].items():
        rows += level_rows(name, run)
    return rows


def spy_rows(p: dict, top: int = 6) -> list[str]:
    """The functions each process spent most samples in (self) during the sampled levels."""
    rows = ["| run | concurrency | process | where the samples were (self share) |",
            "|---|---:|---|---|"]
    for name, run in p["runs"].items():
        for lv in run.get("levels", []):
            for role, s in lv.get("py_spy", {}).items():
                if isinstance(s, dict) and "self" in s:
                    cells = ", ".join(f"{f} {share:.0%}" for f, share in s["self"][:top])
                    rows.append(f"| {name} | {lv['concurrency']} | {role} | {cells} |")
    return rows


def handoff_line(h: dict) -> str:
    """gpu_handoff.py: what a turn of the one GPU between two processes costs."""
    return (f"GPU hand-off between two processes ({h['device']}, {h['date']}, "
            f"`bench/gpu/gpu_handoff.py`): a {h['kernel_us']:.0f} µs kernel and its wait take "
            f"{h['kernel_and_wait_us']:.0f} µs in one process; a turn with the second process "
            f"idle {h['turn_peer_cpu_us']:.0f} µs, with it running the same kernel "
            f"{h['turn_peer_gpu_us']:.0f} µs: **{h['switch_us_per_handoff']:.0f} µs per "
            "hand-off** of the GPU from one process to the other (two per batch-1 token of the "
            "pipeline on one GPU; none across two hosts).")


def cure_rows(c: dict) -> list[str]:
    """bench/gpu/triton_cure.py's variants, in the order tried, with what each showed."""
    def outcome(r: dict) -> str:
        return "intact" if r.get("ok") else f"fails: {r.get('why', '').splitlines()[0][:120]}"

    numpy = {e.rsplit("numpy=", 1)[1] for v in c["variants"].values()
             for e in v.get("echo_u8", {}).get("echoes", []) if "numpy=" in e}
    rows = [f"{c['date']}: /dev/shm {c['shm']['fs_type']}; two processes mapping one file "
            f"there: {c['shm']['coherence']}; numpy in the stub: "
            f"{', '.join(sorted(numpy)) or 'not reported (no echo came back)'}; winner: "
            f"{c['winner'] or 'none'}.", "",
            "| variant | extra flags | server without GPUs | BYTES step (the tail's protocol) | "
            "UINT8 only (no BYTES tensor) |", "|---|---|---|---|---|"]
    for name, v in c["variants"].items():
        rows.append(f"| {name} | {' '.join(v['server_args']) or '(none)'} | "
                    f"{'yes' if v.get('hide_gpus') else 'no'} | {outcome(v.get('echo', v))} | "
                    f"{outcome(v['echo_u8']) if 'echo_u8' in v else '-'} |")
    return rows


def main() -> None:
    p = json.loads((HERE / "pipeline.json").read_text())
    lines = ["# The two-stage pipeline on one GPU through the HTTP API", "",
             "Produced by `python -m bench.gpu.pipeline_gpu --out bench/gpu/pipeline.json` on a "
             "lent GPU machine (set-up: `bench/gpu/device_setup.sh`), rendered by "
             "`python -m bench.gpu.render_pipeline`. Hop = from the head's launch of a micro-batch "
             "to the worker's reply; worker step = the TailRunner's time for it (both means over "
             "the level, from the processes' Prometheus counters).", "",
             *pipeline_table(p), ""]
    if (HERE / "gpu_handoff.json").exists():
        lines += [handoff_line(json.loads((HERE / "gpu_handoff.json").read_text())), ""]
    lines += ["## The Python-backend stub on the GPU host (`bench/gpu/triton_cure.py`)", ""]
    for name, title in (("triton_cure_numpy2.json", "With the machine's numpy 2.5.2"),
                        ("triton_cure.json", "With numpy 1.26.4 carried (the run above)")):
        if (HERE / name).exists():
            cure = json.loads((HERE / name).read_text())
            lines += [f"{title} ({name}):", "", *cure_rows(cure), ""]
    lines += ["## Python stacks (py-spy, busy threads: at concurrency 64 for 4 s; at 1 over the "
              "level, where recorded: the 07:02 call sampled 2 s with waiting threads and missed "
              "its requests)", "", *spy_rows(p), ""]
    notes = HERE / "pipeline_notes.md"
    tail = notes.read_text() if notes.exists() else ""
    (HERE / "pipeline.md").write_text("\n".join(lines) + "\n" + tail)


if __name__ == "__main__":
    main()
