"""deploy/: the Grafana dashboard and the Prometheus rules use only metrics relay exports."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from relay.config import Config
from relay.health import HealthState
from relay.metrics.collector import TURN_FAMILIES, exported_names, install_collectors
from relay.turn.stats import TurnStats

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "relay-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SCRAPE = DEPLOY / "prometheus" / "prometheus.yml"

# Series Prometheus makes itself for every target, not exported by relay.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "le",
}


def metric_names_in(expr: str) -> set[str]:
    """Metric names referenced in a PromQL expression (a small, conservative tokenizer)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\w+", "", e)  # Grafana variables
    # Grafana's label_values(metric, label): the second argument is a label name.
    e = re.sub(r"label_values\(\s*([^,()]*?)\s*,\s*\w+\s*\)", r"(\1)", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):  # a function call
            continue
        if word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_tokenizer_on_examples() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(relay_x_bucket{a="b c"}[5m]))) '
            '/ on(instance) group_left foo_total > bool 1 and up{job="relay"}')
    assert metric_names_in(expr) == {"relay_x_bucket", "foo_total", "up"}
    assert metric_names_in("label_values(stunner_allocations_active, instance)") == {
        "stunner_allocations_active"}


@pytest.fixture
def exported(make_config: Callable[..., Config]) -> set[str]:
    reg = CollectorRegistry(auto_describe=True)
    install_collectors(reg, TurnStats(), make_config(), HealthState())
    names = exported_names(reg)
    # Process metrics exist on Linux only; the dashboard is for production hosts.
    if not sys.platform.startswith("linux"):
        names |= {"process_cpu_seconds_total", "process_resident_memory_bytes",
                  "process_virtual_memory_bytes", "process_open_fds", "process_max_fds"}
    return names


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "definition") and isinstance(v, str):
                yield v
            elif k == "query" and isinstance(v, str) and "(" in v:
                yield v
            else:
                yield from _dashboard_exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _dashboard_exprs(v)


def test_dashboard_loads_and_references_only_exported_metrics(exported: set[str]) -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["title"] and dash["panels"]
    exprs = list(_dashboard_exprs(dash))
    assert len(exprs) >= 20
    used: set[str] = set()
    for e in exprs:
        used |= metric_names_in(e)
    unknown = used - exported - PROMETHEUS_SYNTHETIC
    assert not unknown, f"dashboard uses metrics relay does not export: {sorted(unknown)}"
    # It covers listener and cluster traffic, allocations, errors and the process.
    for needed in ("stunner_listener_bytes_total", "stunner_cluster_bytes_total",
                   "stunner_allocations_active", "relay_turn_auth_failures_total",
                   "relay_turn_dropped_datagrams_total", "process_cpu_seconds_total",
                   "process_resident_memory_bytes"):
        assert needed in used, needed
    # Panel ids are unique (Grafana relies on it).
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_parse_and_reference_only_exported_metrics(exported: set[str]) -> None:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    for needed in ("RelayDown", "RelayAuthFailureRateHigh", "RelayDroppingDatagrams",
                   "RelayAllocationQuotaNearLimit"):
        assert needed in names
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert r["labels"]["severity"] in ("warning", "critical")
        used = metric_names_in(r["expr"])
        assert used, r["alert"]
        unknown = used - exported - PROMETHEUS_SYNTHETIC
        assert not unknown, f"{r['alert']} uses unexported metrics {sorted(unknown)}"
        assert r["expr"].count("(") == r["expr"].count(")")


def test_scrape_config_points_at_metrics_and_rules() -> None:
    doc = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    assert doc["rule_files"] == ["alerts.yml"]
    job = next(j for j in doc["scrape_configs"] if j["job_name"] == "relay")
    assert job["metrics_path"] == "/metrics"
    assert "scrape_protocols" not in job  # Prometheus before 2.49 refuses that key


def test_every_collector_family_is_on_the_dashboard_or_alerts() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    text = " ".join(_dashboard_exprs(dash)) + ALERTS.read_text(encoding="utf-8")
    missing = [n for n in TURN_FAMILIES if n not in text]
    assert not missing, missing
