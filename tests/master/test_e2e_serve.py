"""`duet serve` end to end: the embedded default on the triton executor, then Ctrl-C.

No --model: it writes the tiny deepseek_v3 checkpoint into XDG_CACHE_HOME (a temp dir here),
runs a worker with a managed tritonserver and a master, prints the URL and a curl line. The
greedy answer must equal the engine's in-process one, and SIGINT must leave no process and no
Triton shared-memory region behind.
"""
import os
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from e2e_harness import Service
from e2e_reference import Reference
from master.bundle import ModelBundle

pytestmark = pytest.mark.triton


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def shm_regions(pids: list[int]) -> set[str]:
    """Triton Python-backend shared-memory files these processes have mapped."""
    regions = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        regions |= set(re.findall(r"/dev/shm/triton_python_backend_shm_region_\S+", maps))
    return regions


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def concurrent_long_requests_match_the_reference(client, model, bundle) -> None:
    """Through Triton beyond one short request: three at once, each over several KV blocks,
    so prefill, batched decode steps and block growth all run on the default path."""
    prompts = {i: bundle.tokenizer.encode(f"Request number {i} asks for a longer answer.")
               for i in range(3)}
    reference = Reference(model, bundle.stop_token_ids)
    want = {i: reference.greedy(p, 40) for i, p in prompts.items()}
    with ThreadPoolExecutor(3) as pool:
        got = dict(zip(prompts, pool.map(
            lambda p: client.completions.create(model=model.name, prompt=p, max_tokens=40,
                                                temperature=0, logprobs=0),
            prompts.values())))
    for i, ids in want.items():
        visible = [t for t in ids if t not in bundle.stop_token_ids]
        assert got[i].usage.completion_tokens == len(ids)
        assert got[i].choices[0].logprobs.tokens == [bundle.tokenizer.token_text(t)
                                                     for t in visible]


def test_duet_serve_answers_then_stops_everything_on_ctrl_c(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "duet.cli", "serve", "--port", "0"]
    serve = Service("duet serve", argv, tmp_path / "serve.log", env=env)
    try:
        url = serve.wait_for(r"duet serve: ready at (http://\S+)").group(1)
        assert re.search(r"curl http://\S+/v1/chat/completions", serve.log())
        model = tmp_path / "cache" / "duet" / "tiny-deepseek_v3"
        bundle = ModelBundle.load(model)
        messages = [{"role": "user", "content": "Hello from the test!"}]
        template = bundle.chat_template
        prompt = template.encode(template.render(messages))
        ref = Reference(model, bundle.stop_token_ids).greedy(prompt, 8)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        r = client.completions.create(model=model.name, prompt=prompt, max_tokens=8,
                                      temperature=0, logprobs=0)
        visible = [i for i in ref if i not in bundle.stop_token_ids]
        assert r.choices[0].logprobs.tokens == [bundle.tokenizer.token_text(i) for i in visible]
        chat = client.chat.completions.create(model=model.name, messages=messages,
                                              max_tokens=8, temperature=0)
        assert chat.usage.completion_tokens == len(ref)
        assert chat.usage.prompt_tokens == len(prompt)
        concurrent_long_requests_match_the_reference(client, model, bundle)

        children = descendants(serve.proc.pid)
        assert any("tritonserver" in cmdline(pid) for pid in children), "worker runs Triton"
        regions = shm_regions(children)
        assert regions, "Triton's Python backend maps its shared memory: none found to check"
        serve.proc.send_signal(signal.SIGINT)
        assert serve.proc.wait(60) == 0, serve.log()
        assert "duet serve: stopped" in serve.log()
        assert [pid for pid in children if alive(pid)] == []
        assert [r for r in regions if os.path.exists(r)] == []
    finally:
        serve.stop(signal.SIGKILL)
