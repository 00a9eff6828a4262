"""Prometheus metrics under vLLM's names (so its dashboards work), one registry per app."""
from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Buckets as vLLM uses them, in seconds.
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                  2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                  5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
HOP_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The master's metrics; the HTTP layer observes requests, the scheduler the pipeline."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.model_name = model_name
        r, labels = self.registry, ["model_name"]
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. (duet load)
        self._running = Gauge("vllm:num_requests_running", "Sequences in the running batch.",
                              labels, registry=r)
        self._waiting = Gauge("vllm:num_requests_waiting", "Sequences waiting to run.",
                              labels, registry=r)
        self._cache = Gauge("vllm:gpu_cache_usage_perc",
                            "KV-cache usage, 1 = full (the fuller of the two stages).",
                            labels, registry=r)
        self._ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.",
                               labels, buckets=TTFT_BUCKETS_S, registry=r)
        self._tpot = Histogram("vllm:time_per_output_token_seconds",
                               "Time between two output tokens of a sequence.",
                               labels, buckets=TPOT_BUCKETS_S, registry=r)
        self._e2e = Histogram("vllm:e2e_request_latency_seconds", "Request latency.",
                              labels, buckets=E2E_BUCKETS_S, registry=r)
        self._prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed.",
                               labels, registry=r)
        self._generation = Counter("vllm:generation_tokens", "Generated tokens.",
                                   labels, registry=r)
        self._success = Counter("vllm:request_success", "Finished requests.",
                                labels + ["finished_reason"], registry=r)
        self._prefix_queries = Counter(
            "vllm:prefix_cache_queries", "Prefix-cache queries, in prompt tokens looked up.",
            labels, registry=r)
        self._prefix_hits = Counter(
            "vllm:prefix_cache_hits", "Prefix-cache hits, in prompt tokens found cached.",
            labels, registry=r)
        self._hop = Histogram("duet:pipeline_hop_seconds",
                              "Master-to-worker-and-back time of one step, worker compute "
                              "included.", labels, buckets=HOP_BUCKETS_S, registry=r)

        # Children bound to this model once: .labels() costs more than the observation.
        m = model_name
        self._running, self._waiting = self._running.labels(m), self._waiting.labels(m)
        self._cache, self._hop = self._cache.labels(m), self._hop.labels(m)
        self._ttft, self._tpot, self._e2e = (self._ttft.labels(m), self._tpot.labels(m),
                                             self._e2e.labels(m))
        self._prompt, self._generation = self._prompt.labels(m), self._generation.labels(m)
        self._prefix_queries = self._prefix_queries.labels(m)
        self._prefix_hits = self._prefix_hits.labels(m)

    # --- the scheduler's side ----------------------------------------------------------
    def set_queue(self, running: int, waiting: int) -> None:
        self._running.set(running)
        self._waiting.set(waiting)

    def set_cache_usage(self, frac: float) -> None:
        """frac in [0, 1]: used / capacity of the KV cache."""
        self._cache.set(frac)

    def observe_prefix_cache(self, query_tokens: int, hit_tokens: int) -> None:
        """Admitted prompts: tokens looked up in the prefix cache, and those found."""
        self._prefix_queries.inc(query_tokens)
        self._prefix_hits.inc(hit_tokens)

    def observe_hop(self, s: float) -> None:
        self._hop.observe(s)

    # --- the HTTP layer's side ---------------------------------------------------------
    def observe_ttft(self, s: float) -> None:
        self._ttft.observe(s)

    def observe_tpot(self, s: float) -> None:
        self._tpot.observe(s)

    def observe_request(self, prompt_tokens: int, output_tokens: int, e2e_s: float,
                        finish_reason: str) -> None:
        """A finished sequence (one per choice)."""
        self._prompt.inc(prompt_tokens)
        self._generation.inc(output_tokens)
        self._e2e.observe(e2e_s)
        self._success.labels(self.model_name, finish_reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
