"""relay.app.run end to end: the admin endpoints next to the real parts, on loopback."""

from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from relay import app
from relay.config import Config, Endpoint


def _free_port() -> int:
    # relay.app.run does not hand back the admin ports, so the test picks free ones.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(client: httpx.AsyncClient, url: str) -> httpx.Response:
    with trio.fail_after(10):
        return await client.get(url)


async def test_admin_only_relay_is_ready_and_scrapable(
    make_config: Callable[..., Config],
) -> None:
    mport, hport = _free_port(), _free_port()
    cfg = make_config(raw={"version": "v1", "auth": {"type": "none"}},
                      metrics=Endpoint("127.0.0.1", mport, "/metrics"),
                      health=Endpoint("127.0.0.1", hport, "/"))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(trust_env=False) as c:
            runtime: Any = await nursery.start(app.run, cfg)
            r = await _get(c, f"http://127.0.0.1:{hport}/ready")
            assert r.status_code == 200, r.text
            r = await _get(c, f"http://127.0.0.1:{mport}/metrics")
            assert r.status_code == 200
            names = {f.name for f in text_string_to_metric_families(r.text)}
            assert "stunner_allocations_active" in names
            if sys.platform.startswith("linux"):
                assert "process_cpu_seconds" in names
            runtime.health.shutting_down = True  # what SIGTERM does first
            r = await _get(c, f"http://127.0.0.1:{hport}/ready")
            assert r.status_code == 503
            nursery.cancel_scope.cancel()
    # Stopped: nothing listens any more.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", hport), timeout=2):
        pass


@pytest.mark.skipif(importlib.util.find_spec("relay.net.gateway") is None,
                    reason="relay's TURN gateway (relay.net.gateway) is not in this tree yet")
async def test_relay_with_gateway_ready_probe_and_listener_metrics(
    make_config: Callable[..., Config],
) -> None:
    mport, hport = _free_port(), _free_port()
    cfg = make_config(metrics=Endpoint("127.0.0.1", mport, "/metrics"),
                      health=Endpoint("127.0.0.1", hport, "/"))
    from relay.net import probe

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, httpx.AsyncClient(trust_env=False) as c:
            runtime: Any = await nursery.start(app.run, cfg)
            for st in runtime.health.listeners.values():
                assert st.bound and st.port != 0
            r = await _get(c, f"http://127.0.0.1:{hport}/ready")
            assert r.status_code == 200, r.text
            # The gateway answers the self-probe's Binding on every listener.
            for _ in range(3):
                assert await probe.probe_round(runtime.health, 2.0)
            assert runtime.health.probe_ok
            r = await _get(c, f"http://127.0.0.1:{hport}/ready")
            assert r.status_code == 200
            r = await _get(c, f"http://127.0.0.1:{mport}/metrics")
            assert r.status_code == 200
            fams = {(f.name, f.type): f for f in text_string_to_metric_families(r.text)}
            conns = fams[("stunner_listener_connections", "gauge")]
            assert {s.labels["name"] for s in conns.samples} == {"udp-a", "udp-b"}
            doc = (await _get(c, f"http://127.0.0.1:{hport}/status")).json()
            ports = {x["name"]: x["port"] for x in doc["listeners"]}
            assert all(ports.values())
            nursery.cancel_scope.cancel()
