"""results.json of decode_gpu.py (+ pipeline.json of pipeline_gpu.py) -> results.md; run from
the repo root: python -m bench.gpu.render_results"""
import json
from pathlib import Path

from bench.gpu.render_pipeline import pipeline_table

HERE = Path(__file__).parent
NAMES = {"qwen7b": "R1-Distill-Qwen-7B", "v2lite": "DeepSeek-V2-Lite", "v3": "DeepSeek-V3 dims, 4 layers"}


def _f(value, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def floor_table(r: dict) -> list[str]:
    rows = ["| shape | bytes / step | floor ms | matmul graph ms (eager) | packed products graph ms | "
            "engine eager ms | buffers, no graph ms | graph ms | graph replay alone ms | floor_fraction | "
            "of the torch ceiling | transformers ms | graph / transformers |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, s in r["shapes"].items():
        if "error" in s:
            rows.append(f"| {NAMES.get(shape, shape)} | {s['error']} |")
            continue
        e, m = s["engine"], s["matmuls"]
        graph = e["graph_b1"]["step_ms_p50"]
        hf = s.get("transformers_b1")
        replay = s.get("graph_b1_replay_ms")
        packed = s.get("packed_matmuls", {}).get("graph_ms")
        rows.append(
            f"| {NAMES.get(shape, shape)} | {s['floor_bytes'] / 1e9:.2f} GB | {s['floor_ms']:.2f} "
            f"| {m['graph_ms']:.2f} ({m['eager_ms']:.2f}) | {_f(packed, '.2f')} "
            f"| {e['eager_b1']['step_ms_p50']:.2f} "
            f"| {e['buffers_b1']['step_ms_p50']:.2f} | {graph:.2f} "
            f"| {_f(replay, '.2f')} | {s['floor_ms'] / graph:.0%} | {m['graph_ms'] / graph:.0%} "
            f"| {_f(hf and hf['step_ms'], '.1f')} | {_f(hf and hf['step_ms'] / graph, '.1f', 'x')} |")
    return rows


def batch_table(r: dict) -> list[str]:
    rows = ["| shape | batch | eager tok/s | graph ms/step | graph tok/s | TTFT 2,000-token prompt ms |",
            "|---|---:|---:|---:|---:|---:|"]
    for shape, s in r["shapes"].items():
        if "error" in s:
            continue
        for key, run in s["engine"].items():
            if not key.startswith("graph_"):
                continue
            b = key.split("_b")[1]
            eager = s["engine"].get(f"eager_b{b}")
            b = b.replace("_ctx", " (context ") + (")" if "_ctx" in b else "")
            rows.append(f"| {NAMES.get(shape, shape)} | {b} | {_f(eager and eager['tokens_per_s'], '.0f')} | "
                        f"{run['step_ms_p50']:.2f} | {run['tokens_per_s']:.0f} | "
                        f"{s['ttft_ms']['2000']:.0f} |")
    return rows


def _kernel(name: str, value) -> str:
    if isinstance(value, float):
        return f"{name} {value:.1e}"
    return f"{name} " + " / ".join(f"{a} {b:.1e}" for a, b in value.items())


def main() -> None:
    r = json.loads((HERE / "results.json").read_text())
    k = r["kernel_rel_err"]
    head = [
        "# Decode on one GPU: floor, torch ceiling, engine (eager / graphs), transformers", "",
        "Produced by `python -m bench.gpu.decode_gpu --out bench/gpu/results.json` and",
        "`python -m bench.gpu.pipeline_gpu --out bench/gpu/pipeline.json` on a lent GPU machine,",
        "rendered by `python -m bench.gpu.render_results`. Dummy (seeded random) weights, bf16,",
        f"all layers in one stage; prompt {r['prompt_len']} tokens, {r['decode_steps']} greedy decode",
        "steps; a step = forward + LM head + batched sampler + tokens read back (p50 wall time).",
        f"Floor = bytes a batch-1 step must read / the copy bandwidth measured in the same run "
        f"({r['copy_bytes_per_s'] / 1e12:.2f} TB/s, read + written); MoE counts the routed experts",
        "one token uses. Torch ceiling = the same matrices multiplied one after another as one CUDA graph",
        "(cuBLAS); packed products = the same, with the matrices the engine packs (q/k/v, gate/up,",
        "q_a/kv_a) as one each.", "",
        f"- date: {r['date']}", f"- device: {r['device']}", f"- host: `{r['host']}`",
        f"- torch: {r['torch']}",
        "- kernels vs torch (‖out − ref‖ / ‖ref‖, bf16): " + ", ".join(_kernel(n, v) for n, v in k.items()),
        "",
        "## Batch 1", "", *floor_table(r), "", "## By batch (graphs up to 64)", "", *batch_table(r), "",
    ]
    pipe = HERE / "pipeline.json"
    if pipe.exists():
        head += ["## Two stages through the HTTP API", "", *pipeline_table(json.loads(pipe.read_text())), ""]
    notes = (HERE / "notes.md").read_text() if (HERE / "notes.md").exists() else ""
    (HERE / "results.md").write_text("\n".join(head) + "\n" + notes)


if __name__ == "__main__":
    main()
