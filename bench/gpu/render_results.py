"""results.json of decode_gpu.py -> results.md (run from the repo root)."""
import json
from pathlib import Path

HERE = Path(__file__).parent
NAMES = {"qwen7b": "R1-Distill-Qwen-7B", "v2lite": "DeepSeek-V2-Lite"}


def table(r: dict) -> list[str]:
    rows = [
        "| shape | weights | floor ms/step (batch 1) | batch | engine ms/step | engine tok/s "
        "| transformers tok/s | engine / transformers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape, s in r["shapes"].items():
        for run in s["runs"]:
            e, t = run["engine"], run["transformers"]
            rows.append(
                f"| {NAMES.get(shape, shape)} | {s['weight_bytes'] / 1e9:.1f} GB "
                f"| {s['floor_step_ms_batch1']:.1f} | {run['batch']} | {e['step_ms_p50']:.1f} "
                f"| {e['tokens_per_s']:.1f} | {t['tokens_per_s']:.1f} | {run['ratio']:.2f}x |"
            )
    return rows


def main() -> None:
    r = json.loads((HERE / "results.json").read_text())
    head = [
        "# Decode on one GPU: engine `Stage` vs transformers `generate`", "",
        "Produced by `python -m bench.gpu.decode_gpu --out bench/gpu/results.json` on a lent GPU",
        "machine, rendered by `python -m bench.gpu.render_results`. Real model shapes with dummy",
        "(seeded random) weights, bf16, all layers in one stage; prompt "
        f"{r['prompt_len']} tokens, {r['decode_steps']} greedy decode steps. Engine step time is",
        "the p50 of per-step wall time; transformers' is (generate N+1 tokens - generate 1) / N.",
        "The floor is the weights read once at the 3.0 TB/s copy bandwidth measured on an H100.", "",
        f"- date: {r['date']}", f"- device: {r['device']}", f"- host: `{r['host']}`",
        f"- torch: {r['torch']}", "",
    ]
    notes = (HERE / "notes.md").read_text() if (HERE / "notes.md").exists() else ""
    (HERE / "results.md").write_text("\n".join(head + table(r)) + "\n\n" + notes)


if __name__ == "__main__":
    main()
