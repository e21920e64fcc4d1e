"""The root nursery: starts the admin/metrics app, signaling and the TURN gateway; stops them.

Start order, and why:

1. `Runtime` is assembled here, before anything starts: config, the TURN counters, the
   health state (every listener "not bound"), the metrics registry.  The HTTP parts read
   it; none of them writes its fields.
2. The admin app (`/metrics`, `/live`, `/ready`, `/status`) binds and serves first, so a
   probe gets an answer ("starting", 503) while the rest comes up.
3. Signaling binds next.
4. The gateway binds its listeners last, because its peer policy must refuse every address
   relay itself listens on: it is told the admin and signaling addresses bound in 2 and 3
   up front (and adds its own listeners).  A TURN client can therefore never relay to
   relay's own HTTP ports.
5. The gateway reports the listeners' bound ports; this module marks them bound in the
   health state and, when the admin app serves readiness, starts the media self-probe
   (`relay.net.probe`) against them.  Then relay is started (`/ready` can turn 200) and
   `task_status.started(Running(...))` hands back where everything is.

Shutdown is structure plus deadlines: readiness turns 503 first, then the nursery is
cancelled; every part releases its sockets in `finally` blocks, the listeners are marked
unbound once the gateway has closed them.  With `handle_signals` (the CLI) SIGHUP reloads
the config file and SIGTERM drains first (`relay.lifecycle`): `running.control` does both
for tests and embedders.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs
import trio
from prometheus_client import CollectorRegistry

from relay.config import Config
from relay.fdlimit import quiet_foreign_accept_loops
from relay.health import HealthState
from relay.lifecycle import Control
from relay.metrics.admin import serve_admin
from relay.net.gateway import Gateway, serve_gateway
from relay.net.probe import run_probe
from relay.net.workers import Workers, serve_workers
from relay.runtime import Runtime
from relay.signaling.server import serve_signaling
from relay.signaling.turn_credentials import TurnServers, listener_uris
from relay.turn.stats import TurnStats

log = logging.getLogger("relay")


@attrs.frozen
class Running:
    """A started relay: what its parts share, and where its HTTP parts really bound."""

    runtime: Runtime
    # "metrics", "health", "signaling" -> (host, port) as bound (only the enabled ones)
    http: Mapping[str, tuple[str, int]]
    control: Control | None = None  # reload and drain

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def stats(self) -> TurnStats:
        return self.runtime.stats

    @property
    def health(self) -> HealthState:
        return self.runtime.health


async def run(
    config: Config,
    *,
    config_path: str | None = None,
    watch: bool = False,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every configured part of relay until cancelled (or, with `handle_signals`, until
    SIGTERM's drain ends or SIGINT).  `config_path` is what a reload re-reads; `watch`
    follows it.

    `task_status.started(running)` is called once every listener is bound, so tests (and
    the CLI) can read the bound ports from `running.health.listeners` and `running.http`.
    """
    health = HealthState.for_listeners(config.listeners)
    runtime = Runtime(
        config=config,
        stats=TurnStats(),
        health=health,
        registry=CollectorRegistry(auto_describe=True),
    )
    http: dict[str, tuple[str, int]] = {}
    turn_servers = TurnServers()  # relay's own TURN URIs for /turn/credentials
    quiet_foreign_accept_loops()  # hypercorn's accept loop: EMFILE counted, not a traceback
    admin = config.admin.metrics_endpoint is not None or (
        config.admin.healthcheck_endpoint is not None)
    control = Control(runtime, config_path, turn_servers)
    try:
        async with trio.open_nursery() as nursery:
            if handle_signals:  # first, so no signal finds relay without its handler
                await nursery.start(control.handle_signals, nursery.cancel_scope)
            if admin:
                http.update(await nursery.start(serve_admin, runtime))
            if config.signaling is not None:
                http["signaling"] = await nursery.start(functools.partial(
                    serve_signaling, runtime, control.set_hub, turn_servers=turn_servers))
            if config.listeners:
                gateway = await nursery.start(
                    _serve_listeners, runtime, frozenset(http.values()))
                control.gateway = gateway
                turn_servers.uris = listener_uris(config.listeners, gateway.bound_ports)
            if admin:  # readiness is served: keep it honest about the media path
                await nursery.start(run_probe, health)
            if watch and config_path is not None:
                nursery.start_soon(control.watch)
            health.started = True
            task_status.started(Running(runtime, MappingProxyType(dict(http)), control))
    finally:
        health.shutting_down = True


async def _serve_listeners(
    runtime: Runtime,
    own_addresses: Iterable[tuple[str, int]],
    *,
    task_status: trio.TaskStatus[Gateway | Workers] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The gateway, with its listeners marked bound in the health state while it serves.
    With `turn.workers` > 1 the gateways run in worker processes (`relay.net.workers`)."""
    try:
        async with trio.open_nursery() as nursery:
            if runtime.config.turn.workers > 1:
                workers: Workers = await nursery.start(
                    serve_workers, runtime.config, runtime.stats, runtime.health,
                    frozenset(own_addresses))
                runtime.health.mark_bound(workers.bound_ports)
                task_status.started(workers)
                return
            gateway: Gateway = await nursery.start(
                serve_gateway, runtime.config, runtime.stats, frozenset(own_addresses))
            runtime.health.mark_bound(gateway.bound_ports)
            task_status.started(gateway)
    finally:
        runtime.health.mark_unbound()


def describe(running: Running) -> list[str]:
    """Human-readable lines about what is running, printed at start."""
    cfg = running.config
    lines = []
    for st in running.health.listeners.values():
        lines.append(f"listener {st.name}: {st.protocol} on {_hostport(st.address, st.port)}")
    bound = running.http
    if cfg.admin.metrics_endpoint:
        ep = cfg.admin.metrics_endpoint
        host, port = bound.get("metrics", (ep.bind_host, ep.port))
        lines.append(f"metrics: http://{_hostport(host, port)}{ep.path}")
    if cfg.admin.healthcheck_endpoint:
        ep = cfg.admin.healthcheck_endpoint
        host, port = bound.get("health", (ep.bind_host, ep.port))
        lines.append(f"health: http://{_hostport(host, port)}/live /ready /status")
    sig = cfg.signaling
    if sig is not None:
        if "signaling" in bound:
            host, port = bound["signaling"]
            lines.append(f"signaling: ws://{_hostport(host, port)}/spreed")
        else:
            lines.append(f"signaling: ws://{sig.listen_display}/spreed")
    return lines


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
