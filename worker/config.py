"""The worker's settings: a TOML file, overridden field by field by DUET_WORKER_<FIELD> env vars."""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from runtime.settings import load_settings, settings_from_dict
from engine.dtype_choices import DTYPE_CHOICES

EXECUTORS = ("triton", "local")
FP8_MODES = ("native", "dequantize")
ENV_PREFIX = "DUET_WORKER_"


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def parse_args(value) -> tuple[str, ...]:
    """Command-line flags from a TOML list or one space-separated string (env)."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of command-line flags")
    if not all(v.startswith("--") for v in value):
        raise ValueError("every flag must start with -- (e.g. \"--log-verbose=1\")")
    return tuple(value)


def parse_names(value) -> tuple[str, ...]:
    """Certificate names from a TOML list or a comma-separated string (env)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of certificate names")
    names = tuple(v.strip() for v in value)
    if not names:
        raise ValueError("expected at least one certificate name (leave it out to allow any)")
    if not all(names):
        raise ValueError("an empty certificate name in the list")
    return names


@dataclass(frozen=True)
class WorkerConfig:
    """Where the tail comes from, how it runs, and how the pipeline reaches it."""

    model_dir: str
    layer_start: int  # the worker runs layers [layer_start, L); the API runs [0, layer_start)
    dtype: str = "bfloat16"
    device: str = "cpu"  # torch device of the tail: "cpu", "cuda", "cuda:1"
    fp8: str = "native"  # FP8 checkpoints: keep e4m3 on GPUs that can (cc >= 8.9) | "dequantize"
    kv_cache_bytes: int = 1 << 30
    kv_block_size: int = 16  # tokens per KV block
    cuda_graph_max_batch: int = 64  # steps of up to this many new tokens as CUDA graphs
    #                                  (CUDA devices only); 0 = off
    torch_threads: int = 0  # intra-op CPU threads in the tail's process; 0 = torch's default
    # Ranks of the tail's tensor-parallel group, one process (and GPU: device "cuda" -> cuda:0..,
    # "cuda:4" -> cuda:4..) each, started by the worker itself (engine/rank_launcher.py).
    tensor_parallel_size: int = 1
    tp_timeout_s: float = 60.0  # a rank silent this long inside a step fails the step
    listen: str = "127.0.0.1:50051"  # host:port of the Pipeline gRPC service
    # Plaintext on an address beyond loopback is refused unless this says it is meant.
    allow_plaintext_from_network: bool = False
    executor: str = "triton"
    triton_url: str = ""  # host:port of an existing Triton (gRPC); empty = start our own
    triton_grpc_port: int = 0  # managed Triton's ports on 127.0.0.1; 0 = pick a free one
    triton_http_port: int = 0
    triton_model_name: str = "duet_tail"
    triton_start_timeout_s: float = 120.0  # load a big checkpoint before giving up
    # Extra flags for the managed tritonserver, after duet's own (a later flag wins).
    triton_server_args: tuple[str, ...] = field(default=(), metadata={"parse": parse_args})
    run_dir: str = ""  # managed Triton's model repository and backend dir; empty = a temp dir
    idle_timeout_s: float = 300.0  # a sequence untouched this long is released
    # SIGTERM: the APIs are told to pause and close their streams once the steps already sent
    # are answered; the worker exits when they have, or after this long
    drain_timeout_s: float = 10.0
    # A broken stream's sequences (with a resume key) wait this long for the standby API to
    # adopt them (worker/orphans.py); 0 = released with the stream
    orphan_grace_s: float = 30.0
    max_message_bytes: int = 256 << 20  # gRPC send/receive limit of one step message
    tls_cert_file: str = ""  # server certificate (PEM); with tls_key_file enables TLS
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # CA of client certificates; set = mutual TLS required
    # Client certificate names (CN or SAN) allowed in; empty = any the CA signed.
    tls_client_names: tuple[str, ...] = field(
        default=(), metadata={"parse": parse_names})
    # What one API stream (the master's or the standby's) may hold on the tail, so that no
    # client can starve the other: a fraction of the KV cache, and a number of sequences.
    stream_kv_share: float = 0.5
    stream_max_seqs: int = 256
    metrics_listen: str = ""  # host:port of the Prometheus metrics (worker/metrics.py); "" = off

    def __post_init__(self):
        checks = {
            "model_dir": bool(self.model_dir),
            "layer_start": self.layer_start >= 1,
            "dtype": self.dtype in DTYPE_CHOICES,
            "device": bool(self.device),
            "fp8": self.fp8 in FP8_MODES,
            "kv_cache_bytes": self.kv_cache_bytes > 0,
            "kv_block_size": self.kv_block_size > 0,
            "cuda_graph_max_batch": self.cuda_graph_max_batch >= 0,
            "torch_threads": self.torch_threads >= 0,
            "tensor_parallel_size": self.tensor_parallel_size >= 1,
            "tp_timeout_s": self.tp_timeout_s > 0,
            "listen": _is_host_port(self.listen),
            "executor": self.executor in EXECUTORS,
            "triton_url": not self.triton_url or _is_host_port(self.triton_url),
            "triton_grpc_port": 0 <= self.triton_grpc_port < 65536,
            "triton_http_port": 0 <= self.triton_http_port < 65536,
            "triton_model_name": self.triton_model_name.isidentifier(),
            "triton_start_timeout_s": self.triton_start_timeout_s > 0,
            "idle_timeout_s": self.idle_timeout_s > 0,
            "drain_timeout_s": self.drain_timeout_s >= 0,
            "orphan_grace_s": 0 <= self.orphan_grace_s <= 3600,
            "max_message_bytes": 1024 <= self.max_message_bytes < 2**31,
            "tls_key_file": bool(self.tls_cert_file) == bool(self.tls_key_file),
            "tls_client_ca_file": not self.tls_client_ca_file or bool(self.tls_cert_file),
            "tls_client_names": not self.tls_client_names or bool(self.tls_client_ca_file),
            "stream_kv_share": 0 < self.stream_kv_share <= 1,
            "stream_max_seqs": self.stream_max_seqs >= 1,
            "metrics_listen": not self.metrics_listen or _is_host_port(self.metrics_listen),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"worker config: {name} is invalid: {getattr(self, name)!r}"
                                 f"{_HINTS.get(name, '')}")
        if self.tensor_parallel_size > 1 and self.executor != "local":
            raise ValueError(f"worker config: tensor_parallel_size {self.tensor_parallel_size} "
                             "needs executor = \"local\" (the worker's process is rank 0)")
        if not (self.tls or self.allow_plaintext_from_network or _is_loopback(self.listen)):
            raise ValueError(f"worker config: listen {self.listen!r} is beyond loopback without "
                             "TLS: set tls_cert_file and tls_key_file (and tls_client_ca_file), "
                             "or allow_plaintext_from_network = true")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @classmethod
    def from_toml(cls, path: str | Path,
                  environ: Mapping[str, str] | None = None) -> "WorkerConfig":
        """Read a TOML file (top-level keys or a [worker] table), apply env overrides."""
        return load_settings(cls, path, env_prefix=ENV_PREFIX, table="worker", env=environ)

    @classmethod
    def from_dict(cls, data: Mapping[str, object],
                  environ: Mapping[str, str] | None = None) -> "WorkerConfig":
        """The fields in `data` (strings will do, as Triton's parameters are), env overrides."""
        return settings_from_dict(cls, data, env_prefix=ENV_PREFIX, env=environ)

    def replace(self, **changes) -> "WorkerConfig":
        return dataclasses.replace(self, **changes)


_HINTS = {
    "layer_start": " (must be >= 1: the API runs at least the embedding and one layer)",
    "dtype": f" (one of {', '.join(DTYPE_CHOICES)})",
    "executor": f" (one of {', '.join(EXECUTORS)})",
    "fp8": f" (one of {', '.join(FP8_MODES)})",
    "listen": " (host:port)",
    "orphan_grace_s": " (0 .. 3600 seconds)",
    "metrics_listen": " (host:port, or empty for no metrics)",
    "triton_url": " (host:port of Triton's gRPC endpoint)",
    "tls_key_file": " (tls_cert_file and tls_key_file go together)",
    "tls_client_ca_file": " (mutual TLS needs tls_cert_file and tls_key_file)",
    "tls_client_names": " (a name list needs mutual TLS: set tls_client_ca_file)",
    "stream_kv_share": " (a fraction in (0, 1])",
    "tensor_parallel_size": " (>= 1; it must divide the model's heads, experts and vocabulary)",
}


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 <= int(port) < 65536)

