"""deploy/grafana: every query of the dashboard names metrics the services really export."""
import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from master.metrics import Metrics
from vrrp.status import Status
from worker.metrics import WorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "duet-dashboard.json"
# PromQL words that look like metric names.
PROMQL = {"rate", "irate", "increase", "sum", "avg", "min", "max", "count", "by", "without",
          "histogram_quantile", "le", "on", "ignoring", "and", "or", "unless", "bool", "topk",
          "clamp_min", "clamp_max", "abs", "delta", "deriv", "changes", "resets", "time"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "summary": ("", "_sum", "_count")}


def exported(registry: CollectorRegistry) -> set[str]:
    """Sample names the registry's /metrics shows, derived from each family's type (a
    labelled family shows no sample before its first observation)."""
    return {family.name + suffix for family in registry.collect()
            for suffix in SUFFIXES.get(family.type, ("",))}


def service_metrics() -> set[str]:
    master, worker, agent = Metrics("m"), WorkerMetrics(), Status(51)
    return exported(master.registry) | exported(worker.registry) | exported(agent.registry)


def metric_names(expr: str) -> set[str]:
    bare = re.sub(r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"', " ", expr)  # labels, ranges, strings
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", bare)  # grouping labels
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return {w for w in words if w not in PROMQL and not w.startswith("$")}


def test_every_query_names_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    known = service_metrics()
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    assert len(queries) >= 20
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: {sorted(names - known)} not exported"


def test_dashboard_covers_the_three_services_and_is_importable():
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(metric_names(t["expr"]) for p in dashboard["panels"]
                         for t in p["targets"]))
    for family in ("vllm:time_to_first_token_seconds_bucket", "vllm:gpu_cache_usage_perc",
                   "duet:pipeline_hop_seconds_bucket", "duet_worker_step_seconds_bucket",
                   "vrrp_state", "vrrp_transitions_total", "vllm:num_requests_waiting"):
        assert family in used, family
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


def test_a_wrong_metric_name_would_be_caught():
    assert metric_names('sum(rate(vllm:request_sucess_total[5m]))') == {
        "vllm:request_sucess_total"}
    assert "vllm:request_sucess_total" not in service_metrics()
