"""Where a pipeline level's time goes: the master's and the worker's Prometheus counters read
before and after it (steps, mean hop, mean worker step), and, when py-spy is installed, a
few seconds of both processes' Python stacks summarized by the functions they spend the
most samples in."""
from __future__ import annotations

import collections
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

SERIES = {  # name in the JSON: (which process, Prometheus series)
    "master_steps": ("master", r"duet:pipeline_hop_seconds_count"),
    "master_hop_s": ("master", r"duet:pipeline_hop_seconds_sum"),
    "worker_steps": ("worker", r"duet_worker_step_seconds_count"),
    "worker_step_s": ("worker", r"duet_worker_step_seconds_sum"),
    "worker_tail_s": ("worker", r"duet_worker_tail_seconds_sum"),
    "worker_tokens": ("worker", r"duet_worker_tokens_total"),
    # the master's own TTFT: from the request reaching the app to its first token's event
    "master_ttft_s": ("master", r"vllm:time_to_first_token_seconds_sum"),
    "master_ttft_n": ("master", r"vllm:time_to_first_token_seconds_count"),
}


def scrape(urls: dict[str, str]) -> dict[str, float]:
    """Sum of each series over its labels, from master and worker /metrics."""
    out = {}
    texts = {role: httpx.get(f"{url}/metrics", timeout=10).text for role, url in urls.items()}
    for key, (role, series) in SERIES.items():
        pattern = re.compile(rf"^{re.escape(series)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.M)
        out[key] = sum(float(v) for v in pattern.findall(texts[role]))
    return out


def breakdown(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in SERIES}
    steps, wsteps = max(d["master_steps"], 1), max(d["worker_steps"], 1)
    return {"steps": int(d["master_steps"]), "hop_ms_mean": d["master_hop_s"] / steps * 1e3,
            "worker_step_ms_mean": d["worker_step_s"] / wsteps * 1e3,
            "worker_tail_ms_mean": d["worker_tail_s"] / wsteps * 1e3,
            "tokens_per_worker_step": d["worker_tokens"] / wsteps,
            "server_ttft_ms_mean": d["master_ttft_s"] / max(d["master_ttft_n"], 1) * 1e3}


class StackSampler:
    """py-spy on the master and the worker for `seconds` after `delay_s`, in the background."""

    def __init__(self, pids: dict[str, int], seconds: float, delay_s: float):
        self.procs, self.files = {}, {}
        self.tmp = Path(tempfile.mkdtemp(prefix="pyspy-"))
        exe = shutil.which("py-spy")
        self.error = None if exe else "py-spy not installed"
        for role, pid in pids.items() if exe else ():
            self.files[role] = self.tmp / f"{role}.txt"
            record = (f"sleep {delay_s}; exec {exe} record --pid {pid} --duration {int(seconds)} "
                      f"--rate 200 --format raw --nonblocking --threads "
                      f"--output {self.files[role]}")  # after the clients have started
            self.procs[role] = subprocess.Popen(["bash", "-c", record], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)

    def summary(self, top: int = 15) -> dict:
        out = {"error": self.error} if self.error else {}
        for role, proc in self.procs.items():
            _, err = proc.communicate(timeout=60)
            path = self.files[role]
            if not path.exists():
                out[role] = {"error": err.decode(errors="replace")[-500:]}
                continue
            out[role] = summarize(path.read_text(errors="replace"), top)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return out


def summarize(collapsed: str, top: int) -> dict:
    """Collapsed stacks ("thread;f1;f2 count") -> share of samples per thread, per leaf
    function (self) and per function anywhere on the stack (inclusive)."""
    own, incl, threads = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        threads[frames[0]] += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n

    def share(c: collections.Counter) -> list:
        return [[name, round(v / max(total, 1), 3)] for name, v in c.most_common(top)]

    return {"samples": total, "threads": share(threads), "self": share(own),
            "inclusive": share(incl)}
