"""Shared fixtures of the metrics/admin tests: configs on loopback port 0 and a running admin
(with the readiness self-probe next to it, as `relay.app` runs them)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import attrs
import pytest
import trio

from relay.config import Config, Endpoint
from relay.metrics.admin import serve_admin
from relay.net import probe
from relay.runtime import Runtime

BASE = {
    "version": "v1",
    "auth": {"type": "static", "credentials": {"username": "user1", "password": "s3cret-pw"}},
    "listeners": [
        {"name": "udp-a", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
         "routes": ["media"]},
        {"name": "udp-b", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
         "routes": ["media", "backup"]},
    ],
    "clusters": [
        {"name": "media", "type": "STATIC", "endpoints": ["10.0.0.0/8", "192.0.2.7:<1000-2000>"]},
        {"name": "backup", "type": "STATIC", "endpoints": ["198.51.100.0/24"]},
    ],
}


def loopback_config(
    *,
    metrics: Endpoint | None = Endpoint("127.0.0.1", 0, "/metrics"),
    health: Endpoint | None = Endpoint("127.0.0.1", 0, "/"),
    allowed_ips: list[str] | None = None,
    trusted_proxies: list[str] | None = None,
    raw: dict[str, Any] | None = None,
) -> Config:
    """A parsed config with the admin endpoints on 127.0.0.1 port 0."""
    cfg = Config.from_mapping(raw if raw is not None else BASE)
    stats = cfg.stats
    if allowed_ips is not None:
        stats = attrs.evolve(stats, allowed_ips=tuple(ipaddress.ip_network(a)
                                                     for a in allowed_ips))
    if trusted_proxies is not None:
        stats = attrs.evolve(stats, trusted_proxies=tuple(ipaddress.ip_network(a)
                                                         for a in trusted_proxies))
    admin = attrs.evolve(cfg.admin, metrics_endpoint=metrics, healthcheck_endpoint=health)
    return attrs.evolve(cfg, admin=admin, stats=stats)


def runtime_for(config: Config) -> Runtime:
    """A runtime whose health state lists every configured listener, none bound yet."""
    return Runtime(config)


@attrs.define
class RunningAdmin:
    runtime: Runtime
    bound: dict[str, tuple[str, int]]
    nursery: trio.Nursery

    def url(self, role: str, path: str) -> str:
        host, port = self.bound[role]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


StartAdmin = Callable[..., Any]


@pytest.fixture
async def start_admin(nursery: trio.Nursery) -> AsyncIterator[StartAdmin]:
    """`await start_admin(config, probe_interval=, probe_timeout=, probe_failures=)` ->
    RunningAdmin: the admin app and the self-probe on its health state (cancelled at end)."""

    async def start(config: Config, *, probe_interval: float = 0.05,
                    probe_timeout: float = 0.2,
                    probe_failures: int = probe.PROBE_FAILURES) -> RunningAdmin:
        rt = runtime_for(config)
        with trio.fail_after(10):
            bound = await nursery.start(serve_admin, rt)
            await nursery.start(partial(probe.run_probe, rt.health, interval=probe_interval,
                                        wait=probe_timeout, failures=probe_failures))
        return RunningAdmin(rt, bound, nursery)

    yield start


@pytest.fixture
def make_config() -> Callable[..., Config]:
    return loopback_config


@pytest.fixture
def make_runtime() -> Callable[[Config], Runtime]:
    return runtime_for
