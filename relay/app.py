"""The root nursery: starts the TURN gateway, the admin/metrics app and signaling; stops them.

Shutdown is structure plus deadlines: readiness turns 503 first, then the nursery is
cancelled; every part releases its sockets in `finally` blocks.
"""

from __future__ import annotations

import logging

import trio

from relay.config import Config
from relay.runtime import ListenerStatus, Runtime

log = logging.getLogger("relay")


async def run(
    config: Config,
    *,
    task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every configured part of relay until cancelled.

    `task_status.started(runtime)` is called once every listener is bound, so tests (and
    the CLI) can read the bound ports from `runtime.health.listeners`.
    """
    runtime = Runtime(config)
    for lis in config.listeners:
        runtime.health.listeners[lis.name] = ListenerStatus(
            lis.name, lis.protocol, lis.address, lis.port
        )
    try:
        async with trio.open_nursery() as nursery:
            if config.admin.metrics_endpoint or config.admin.healthcheck_endpoint:
                from relay.metrics.admin import serve_admin

                bound_admin = await nursery.start(serve_admin, runtime)
                runtime.bound_http.update(bound_admin or {})
            if config.signaling is not None:
                from relay.signaling.server import serve_signaling

                bound = await nursery.start(serve_signaling, runtime)
                runtime.own_addresses.add(bound)
                runtime.bound_http["signaling"] = bound
            # The gateway starts last: the peer policy refuses every address bound above.
            if config.listeners:
                from relay.net.gateway import serve_gateway

                await nursery.start(serve_gateway, runtime)
            runtime.health.started = True
            task_status.started(runtime)
    finally:
        runtime.health.shutting_down = True


def describe(runtime: Runtime) -> list[str]:
    """Human-readable lines about what is running, printed at start."""
    cfg = runtime.config
    lines = []
    for st in runtime.health.listeners.values():
        lines.append(f"listener {st.name}: {st.protocol} on {_hostport(st.address, st.port)}")
    bound = runtime.bound_http
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
