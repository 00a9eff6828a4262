"""serve_greedy.json (bench/fp8/serve_greedy.py) -> serve_greedy.md; run from the repository
root: python -m bench.fp8.render_serve_greedy"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def same(a: list, b: list) -> int:
    return sum(x == y for x, y in zip(a, b))


def where(p: dict) -> str:
    """The first difference's position, the reference's top-2 margin, the native token's rank."""
    if p["first_difference"] is None:
        return "- | - | -"
    margin, rank = p["ref_top2_margin_at_first_difference"], p["test_token_rank_in_ref_top2"]
    return (f"{p['first_difference']} | {'-' if margin is None else f'{margin:.4f}'} | "
            f"{'no' if rank is None else f'yes (#{rank + 1})'}")


def table(s: dict) -> list[str]:
    """Per prompt and dtype: native vs dequantize, and where they first differ, why."""
    rows = ["| prompt | dtype | equal of 32 | first difference at | dequantize's top-2 margin "
            "there (nats) | native's token in dequantize's top 2 |", "|---|---|---:|---:|---:|---|"]
    for i, prompt in enumerate(s["prompts"]):
        for dtype, r in s["dtypes"].items():
            if "error" in r:
                continue
            p = r["prompts"][i]
            rows.append(f"| {i}: {prompt} | {dtype} | {p['equal']} | {where(p)} |")
    return rows


def noise_rows(s: dict) -> list[str]:
    """bf16 against fp32 in the same fp8 mode: what bf16 rounding alone does to the tokens."""
    d = s["dtypes"]
    if not {"bfloat16", "float32"} <= d.keys() or "tokens" not in d["float32"]:
        return []
    rows = ["| fp8 mode | bf16 vs fp32, equal of 32 per prompt |", "|---|---|"]
    for mode in ("native", "dequantize"):
        counts = [same(a, b) for a, b in zip(d["bfloat16"]["tokens"][mode],
                                              d["float32"]["tokens"][mode])]
        rows.append(f"| {mode} | {', '.join(map(str, counts))} |")
    return rows


def main() -> None:
    s = json.loads((HERE / "serve_greedy.json").read_text())
    lines = ["# Tiny FP8 checkpoint through `duet serve`: native vs dequantize", "",
             f"Produced by `python -m bench.fp8.serve_greedy --out bench/fp8/serve_greedy.json` "
             f"on {s['device']} ({s['date']}; `duet serve` with the {s['executor']} executor: "
             f"a worker process and the master with the HTTP API, asked by the openai client), "
             "rendered by `python -m bench.fp8.render_serve_greedy`. Each prompt: "
             f"{s['tokens_per_prompt']} greedy tokens (chat completions, temperature 0, "
             "top-2 logprobs; tokens compared by their bytes).", "",
             *table(s), "", "bf16 against fp32 in the same fp8 mode: how far bf16 rounding "
             "alone moves the greedy tokens of this checkpoint.", "",
             *noise_rows(s), ""]
    notes = HERE / "serve_greedy_notes.md"
    tail = notes.read_text() if notes.exists() else ""
    (HERE / "serve_greedy.md").write_text("\n".join(lines) + "\n" + tail)


if __name__ == "__main__":
    main()
