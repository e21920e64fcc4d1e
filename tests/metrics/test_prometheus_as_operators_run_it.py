"""Prometheus as operators run it: the shipped scrape config and rules load in the
Prometheus of Debian stable (`promtool`, when installed), both of relay's /metrics ports
answer text 0.0.4 whatever the Accept header says and pass `promtool check metrics`, and
each metric family is served on one port only, so scraping both counts nothing twice."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from relay import app
from relay.config import Config
from tests.turn.gateway_harness import free_port_range

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)")
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=DEPLOY)


@needs_promtool
def test_promtool_accepts_the_scrape_config_and_rules() -> None:
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scrape_config_needs_no_newer_prometheus_than_debian_stable() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == {"relay", "relay-signaling"}
    for job in jobs.values():
        # scrape_protocols (2.49+) makes Prometheus 2.42 refuse the whole file
        assert "scrape_protocols" not in job and job["metrics_path"] == "/metrics"


def both_ports_config() -> Config:
    lo, hi = free_port_range(8, ("127.0.0.1",))
    return Config.from_mapping({
        "version": "v1",
        "admin": {"metrics_endpoint": "http://127.0.0.1:0/metrics", "healthcheck_endpoint": "",
                  "loglevel": "all:WARN"},
        "auth": {"type": "static", "credentials": {"username": "u", "password": "p"}},
        "listeners": [{"name": "udp", "address": "127.0.0.1", "port": 0, "routes": ["c"]}],
        "clusters": [{"name": "c", "type": "STATIC", "endpoints": ["127.0.0.1/32"]}],
        "turn": {"min_port": lo, "max_port": hi},
        "signaling": {"http": {"listen": "127.0.0.1:0"},
                      "backend": {"allowall": True, "secret": "scrape-test-secret"}},
    })


async def scrape_both() -> dict[str, httpx.Response]:
    out: dict[str, httpx.Response] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(trust_env=False) as c:
            running: Any = await nursery.start(app.run, both_ports_config())
            for part in ("metrics", "signaling"):
                host, port = running.http[part]
                out[part] = await c.get(f"http://{host}:{port}/metrics",
                                        headers={"Accept": OPENMETRICS})
            nursery.cancel_scope.cancel()
    return out


def families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


async def test_each_family_is_served_on_one_port_only() -> None:
    got = await scrape_both()
    for r in got.values():
        assert r.status_code == 200
        # asked for OpenMetrics first, still served text 0.0.4
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# EOF" not in r.text
    admin, signaling = families(got["metrics"].text), families(got["signaling"].text)
    assert admin and signaling and not admin & signaling, admin & signaling
    assert "stunner_allocations_active" in admin and "relay_turn_requests" in admin
    # the signaling port: spreed-signaling's families and relay's own signaling counters
    assert all(n.startswith(("signaling_", "relay_signaling_")) for n in signaling), signaling
    assert not any(n.startswith("signaling_") for n in admin), admin


@needs_promtool
async def test_promtool_check_metrics_passes_on_both_ports() -> None:
    got = await scrape_both()
    for part, r in got.items():
        proc = await trio.to_thread.run_sync(
            lambda text=r.text: promtool("check", "metrics", stdin=text))
        assert proc.returncode == 0, (part, proc.stdout + proc.stderr)
