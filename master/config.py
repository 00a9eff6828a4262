"""The API host's settings: one TOML file, overridden by DUET_MASTER_<FIELD> and DUET_API_KEYS.

Add a field by adding it to `MasterConfig` (with a unit in its name if it is a time or a size)
and, if it has a range, a line in `_checks`; loading, env overrides and errors follow.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from engine.dtype_choices import DTYPE_CHOICES
from master.api_keys import parse_api_keys
from runtime.settings import load_settings
from master.tool_formats import PARSERS

ENV_PREFIX = "DUET_MASTER_"
ROLES = ("master", "standby")
FP8_MODES = ("native", "dequantize")


def _api_keys(value) -> Mapping[str, str]:
    """A read-only id -> key map from any form parse_api_keys accepts."""
    return types.MappingProxyType(parse_api_keys(value))


def _origins(value) -> tuple[str, ...]:
    """A TOML list, or the environment's comma-separated text."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of origins")
    return tuple(value)


@dataclass(frozen=True)
class MasterConfig:
    """Everything the master (or the standby API) reads at start-up."""

    model_dir: str
    served_model_name: str = ""  # "" = the model directory's name
    host: str = "127.0.0.1"
    port: int = 8000
    head_layer_end: int = 1  # k: this host runs layers [0, k)
    dtype: str = "float32"
    device: str = "cpu"
    fp8: str = "native"  # FP8 checkpoints: keep e4m3 on GPUs that can (cc >= 8.9) | "dequantize"
    kv_cache_bytes: int = 256 * 2**20
    cuda_graph_max_batch: int = 64  # steps of up to this many new tokens as CUDA graphs
    #                                  (CUDA devices only; >= max_num_seqs to graph them all); 0 = off
    worker_address: str = "127.0.0.1:50051"
    tls_ca_file: str = ""  # all three empty = plaintext gRPC
    tls_cert_file: str = ""
    tls_key_file: str = ""
    api_keys: Mapping[str, str] = field(  # id -> key; {} = open; also from DUET_API_KEYS
        default_factory=dict, repr=False, metadata={"parse": _api_keys, "env": "DUET_API_KEYS"})
    admin_keys: Mapping[str, str] = field(  # id -> key for /admin/*; also DUET_ADMIN_KEYS
        default_factory=dict, repr=False, metadata={"parse": _api_keys, "env": "DUET_ADMIN_KEYS"})
    admin_from_loopback: bool = True  # loopback callers need no admin key (the VRRP hook)
    forwarded_allow_ips: str = ""  # proxies trusted for X-Forwarded-*; "" = headers ignored
    max_num_seqs: int = 64  # sequences running at once
    max_waiting: int = 256  # queued sequences before 429
    step_token_budget: int = 2048  # new tokens per step, prefill chunks included
    max_model_len: int = 0  # 0 = the checkpoint's max_position_embeddings
    log_prompts: bool = False  # prompt text in the access log
    role: str = "master"  # "standby" answers only after POST /admin/activate
    standby_mode: str = "hot"  # a standby's head: "hot" loaded at start, "cold" on activation
    reasoning_parser: str = "auto"  # "auto" (R1-style <think> if the template uses it) | "none"
    tool_call_parser: str = "auto"  # auto (by tokenizer) | deepseek_v3 | hermes | none
    cors_allow_origins: tuple[str, ...] = field(  # origins browsers may call from; () = no
        default=(), metadata={"parse": _origins})  # CORS headers at all. Env: comma-separated
    max_output_tokens: int = 32768  # per request; absent max_tokens = min(what fits, this)
    max_request_body_bytes: int = 32 * 2**20  # larger request bodies get 413
    tokenizer_threads: int = 2  # tokenize and render chat templates off the event loop
    # The pipeline (master/pipeline_generator.py, master/pipeline_client.py):
    kv_block_size: int = 16  # tokens per KV block of the head's cache
    enable_prefix_caching: bool = True  # share KV blocks of equal prompt prefixes (both stages)
    max_inflight_batches: int = 2  # micro-batches sent to the worker, not yet answered
    step_timeout_s: float = 120.0  # a step unanswered this long means the worker is gone
    max_message_bytes: int = 256 * 2**20  # gRPC limit of one step message, both ways
    reconnect_max_s: float = 5.0  # longest wait between attempts to reach the worker
    # a lost worker's running sequences wait this long for a new one (re-prefilled, then
    # resumed: clients see a pause); past it they fail and new requests get 503. 0 = fail at once
    recovery_budget_s: float = 30.0
    drain_timeout_s: float = 30.0  # on SIGTERM, running requests get this long to finish
    #                                (new ones get 503 + Retry-After meanwhile)
    torch_threads: int = 0  # intra-op CPU threads of the head; 0 = torch's default
    # Ranks of the head's tensor-parallel group, one process (and GPU: device "cuda" -> cuda:0..,
    # "cuda:4" -> cuda:4..) each, started by this process (engine/rank_launcher.py).
    tensor_parallel_size: int = 1
    tp_timeout_s: float = 60.0  # a rank silent this long inside a step fails the step
    # Resumable responses (master/resume.py): a response whose client left keeps going this
    # long for a reconnect with the same X-Request-Id (0 = stop at once); finished ones stay
    # readable resume_keep_s, at most resume_keep_bytes of events in all
    resume_detached_s: float = 10.0
    resume_keep_s: float = 60.0
    resume_keep_bytes: int = 64 * 2**20

    def __post_init__(self):
        bad = [f"{name}: expected {expected}, got {getattr(self, name)!r}"
               for name, (ok, expected) in _checks(self).items() if not ok]
        if bad:
            raise ValueError("; ".join(bad))
        if not self.served_model_name:
            object.__setattr__(self, "served_model_name", Path(self.model_dir).name)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file or self.tls_key_file)


def _checks(c: MasterConfig) -> dict[str, tuple[bool, str]]:
    """Field -> (valid, what a valid value looks like)."""
    return {
        "model_dir": (bool(c.model_dir), "a checkpoint directory"),
        "port": (0 <= c.port <= 65535, "0..65535"),
        "head_layer_end": (c.head_layer_end >= 1, "k >= 1"),
        "dtype": (c.dtype in DTYPE_CHOICES, " | ".join(DTYPE_CHOICES)),
        "device": (bool(c.device), "a torch device such as cpu or cuda:0"),
        "fp8": (c.fp8 in FP8_MODES, " | ".join(FP8_MODES)),
        "kv_cache_bytes": (c.kv_cache_bytes > 0, "a positive number of bytes"),
        "cuda_graph_max_batch": (c.cuda_graph_max_batch >= 0, ">= 0 (0 = off)"),
        "worker_address": (":" in c.worker_address, "host:port"),
        "max_num_seqs": (c.max_num_seqs >= 1, ">= 1"),
        "max_waiting": (c.max_waiting >= 0, ">= 0"),
        "step_token_budget": (c.step_token_budget >= 1, ">= 1"),
        "max_model_len": (c.max_model_len >= 0, ">= 0 (0 = the checkpoint's)"),
        "role": (c.role in ROLES, " | ".join(ROLES)),
        "standby_mode": (c.standby_mode in ("hot", "cold"), "hot | cold"),
        "reasoning_parser": (c.reasoning_parser in ("auto", "none"), "auto | none"),
        "tool_call_parser": (c.tool_call_parser in PARSERS, " | ".join(PARSERS)),
        "cors_allow_origins": (all(isinstance(o, str) and o for o in c.cors_allow_origins),
                               'a list of origins such as ["https://app.example"] or ["*"]'),
        "max_output_tokens": (1 <= c.max_output_tokens < 2**31, "1 .. 2**31 - 1 tokens"),
        "max_request_body_bytes": (c.max_request_body_bytes >= 1024, ">= 1024 bytes"),
        "tokenizer_threads": (c.tokenizer_threads >= 1, ">= 1"),
        "kv_block_size": (c.kv_block_size >= 1, ">= 1"),
        "max_inflight_batches": (c.max_inflight_batches >= 1, ">= 1"),
        "step_timeout_s": (c.step_timeout_s > 0, "> 0 seconds"),
        "max_message_bytes": (1024 <= c.max_message_bytes < 2**31, "1024 .. 2**31 - 1 bytes"),
        "reconnect_max_s": (c.reconnect_max_s >= 0.1, ">= 0.1 seconds"),
        "recovery_budget_s": (c.recovery_budget_s >= 0, ">= 0 seconds (0 = no recovery)"),
        "drain_timeout_s": (c.drain_timeout_s >= 0, ">= 0 seconds"),
        "torch_threads": (c.torch_threads >= 0, ">= 0 (0 = torch's default)"),
        "tensor_parallel_size": (c.tensor_parallel_size >= 1,
                                 ">= 1, dividing the model's heads, experts and vocabulary"),
        "tp_timeout_s": (c.tp_timeout_s > 0, "> 0 seconds"),
        "resume_detached_s": (0 <= c.resume_detached_s <= 3600, "0 .. 3600 seconds"),
        "resume_keep_s": (0 <= c.resume_keep_s <= 86400, "0 .. 86400 seconds"),
        "resume_keep_bytes": (c.resume_keep_bytes >= 0, ">= 0 bytes"),
    }


def load_master_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None, **overrides
) -> MasterConfig:
    """TOML file (optional) < environment < keyword overrides; errors name the field."""
    return load_settings(MasterConfig, path, env_prefix=ENV_PREFIX, env=env, overrides=overrides)
