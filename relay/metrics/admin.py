"""The admin HTTP app: `/metrics` for Prometheus and `/live`, `/ready`, `/status` for probes.

A small ASGI app (no framework) served by hypercorn's Trio worker inside relay's nursery.

- `/metrics` (at `admin.metrics_endpoint`) answers the Prometheus text format 0.0.4 and
  nothing else, whatever the `Accept` header asks: relay's STUNner names pair a gauge `X`
  with a counter `X_total`, which OpenMetrics cannot carry.  It is gated like
  spreed-signaling's stats endpoints (`relay.access`): clients outside
  `stats.allowed_ips` get 403.
- `/live`, `/ready`, `/status` (under `admin.healthcheck_endpoint`) are open to everyone, so
  load balancers and Kubernetes can probe them, and serve no secrets.
- Hostile clients are bounded: header size, read and keep-alive timeouts, requests per
  connection (hypercorn's settings), a deadline on every send and a cap on open
  connections (ours); each connection is its own Trio task, far from the media path.
  Request bodies are never read.

`serve_admin(runtime)` binds the sockets itself (so port 0 works and the real ports are
known) and serves both endpoints (one server when they share host:port).  It only reads
the health state; `relay.app` owns it and runs the readiness self-probe (`relay.net.probe`)
that feeds it.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from relay.access import is_allowed
from relay.config import Endpoint
from relay.errors import ConfigError
from relay.fdlimit import serve_accepts
from relay.metrics.collector import install_collectors
from relay.runtime import Runtime

log = logging.getLogger("relay.admin")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # never OpenMetrics, see the module doc
FORBIDDEN_BODY = b"Authentication check failed\n"

# Hostile-client bounds, all per connection.
MAX_HEADER_BYTES = 16 * 1024  # request line + headers; larger gets 431 and is closed
READ_TIMEOUT = 10  # seconds without a byte from the client: connection closed
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection is kept
KEEP_ALIVE_MAX_REQUESTS = 100  # bounds what a pipelining client can queue per connection
MAX_CONNECTIONS = 512  # per admin socket; beyond it new connections are closed at once
SEND_TIMEOUT = 10.0  # seconds a response may take to leave; then the connection is closed
GRACEFUL_TIMEOUT = 1.0  # seconds in-flight requests get when the admin server stops


@attrs.frozen
class Routes:
    """What one listening socket serves: the metrics path and/or the health prefix."""

    metrics_path: str | None = None
    health_prefix: str | None = None  # "" for the root: /live, /ready, /status


class AdminApp:
    """The ASGI app.  One instance per listening socket (its `Routes` differ)."""

    def __init__(self, runtime: Runtime, routes: Routes) -> None:
        self.runtime = runtime
        self.routes = routes
        self._handlers: dict[str, Callable[[Scope], tuple[int, str, bytes]]] = {}
        if routes.health_prefix is not None:
            p = routes.health_prefix
            self._handlers[f"{p}/live"] = self._live
            self._handlers[f"{p}/ready"] = self._ready
            self._handlers[f"{p}/status"] = self._status
        if routes.metrics_path is not None:
            self._handlers[routes.metrics_path] = self._metrics
        self._last_error_log = -1e9

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, send: Send) -> None:
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        handler = self._handlers.get(path)
        extra: list[tuple[bytes, bytes]] = []
        if _head_size(scope) > MAX_HEADER_BYTES:
            # hypercorn (h11) bounds only a head that arrives in pieces; a whole one is
            # measured here, so the limit holds however the client sends it.
            status, ctype, body = 431, TEXT, b"Request Header Fields Too Large\n"
            extra = [(b"connection", b"close")]
        elif handler is None:
            status, ctype, body = 404, TEXT, b"Not Found\n"
        elif method not in ("GET", "HEAD"):
            status, ctype, body = 405, TEXT, b"Method Not Allowed\n"
            extra = [(b"allow", b"GET, HEAD")]
        else:
            status, ctype, body = handler(scope)
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    # -- health: open, no secrets ---------------------------------------------------------

    def _live(self, scope: Scope) -> tuple[int, str, bytes]:
        return 200, JSON, b'{"status":"live"}\n'

    def _ready(self, scope: Scope) -> tuple[int, str, bytes]:
        ready = self.runtime.health.ready()
        body = {"ready": ready}
        if not ready:
            body["reasons"] = not_ready_reasons(self.runtime)  # type: ignore[assignment]
        return (200 if ready else 503), JSON, _json(body)

    def _status(self, scope: Scope) -> tuple[int, str, bytes]:
        return 200, JSON, _json(status_document(self.runtime))

    # -- metrics: gated -------------------------------------------------------------------

    def _metrics(self, scope: Scope) -> tuple[int, str, bytes]:
        stats_cfg = self.runtime.config.stats
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        if not is_allowed(peer, headers, stats_cfg.allowed_ips, stats_cfg.trusted_proxies):
            return 403, TEXT, FORBIDDEN_BODY
        try:
            body = generate_latest(self.runtime.registry)
        except Exception:  # a broken collector: answer 500, log at most once a minute
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                log.exception("metrics collection failed")
            return 500, TEXT, b"metrics collection failed\n"
        return 200, METRICS_CONTENT_TYPE, body


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def not_ready_reasons(runtime: Runtime) -> list[str]:
    h = runtime.health
    reasons = []
    if not h.started:
        reasons.append("starting")
    if h.draining:
        reasons.append("draining")
    elif h.shutting_down:
        reasons.append("shutting down")
    reasons.extend(f"listener {s.name} not bound" for s in h.listeners.values() if not s.bound)
    reasons.extend(f"TURN worker {w.index} down" for w in h.workers.values() if not w.up)
    if not h.probe_ok:
        reasons.append("self-probe failing")
    return reasons


def status_document(runtime: Runtime) -> dict[str, Any]:
    """The `/status` JSON: what runs where and how it is doing; never a credential."""
    cfg = runtime.config
    h = runtime.health
    st = runtime.stats
    return {
        "name": cfg.admin.name,
        "version": runtime.version,
        "uptime_seconds": round(time.monotonic() - runtime.started_monotonic, 3),
        "ready": h.ready(),
        "shutting_down": h.shutting_down,
        "draining": h.draining,
        "config_reloads": dict(h.reloads),
        "probe_ok": h.probe_ok,
        "listeners": [
            {
                "name": s.name,
                "protocol": s.protocol,
                "address": s.address,
                "port": s.port,
                "bound": s.bound,
                "connections": _conn(st.listeners.get(s.name)),
            }
            for s in h.listeners.values()
        ],
        "clusters": [
            {
                "name": c.name,
                "type": c.type,
                "protocol": c.protocol,
                "endpoints": [_endpoint_text(e) for e in c.endpoints] + list(c.hostnames),
                "connections": _conn(st.clusters.get(c.name)),
            }
            for c in cfg.clusters
        ],
        "allocations": st.allocations_active,
        "allocations_total": st.allocations_total,
        "permissions": st.permissions_active,
        "channels": st.channels_active,
        **({"workers": [
            {"index": w.index, "pid": w.pid, "up": w.up, "since": round(w.since, 3),
             "restarts": w.restarts, "allocations": w.allocations, "packets": w.packets}
            for w in h.workers.values()
        ]} if h.workers else {}),
    }


def _conn(s: Any) -> int:
    return int(s.connections) if s is not None else 0


def _endpoint_text(e: Any) -> str:
    text = str(e.network)
    if (e.min_port, e.max_port) != (0, 65535):
        text += f":<{e.min_port}-{e.max_port}>"
    return text


# -- serving ------------------------------------------------------------------------------------


def _head_size(scope: Scope) -> int:
    """Bytes of the request line and header fields, as the client sent them over HTTP/1.1."""
    size = len(scope.get("method", "")) + len(scope.get("raw_path", b"")) + 12
    query = scope.get("query_string", b"")
    if query:
        size += len(query) + 1
    for name, value in scope.get("headers", ()):
        size += len(name) + len(value) + 4
    return size


def hypercorn_config() -> HyperConfig:
    """hypercorn settings that bound what one client can cost us."""
    hc = HyperConfig()
    hc.accesslog = None
    hc.errorlog = logging.getLogger("relay.admin.http")
    hc.include_server_header = False
    hc.h11_max_incomplete_size = MAX_HEADER_BYTES
    hc.h2_max_header_list_size = MAX_HEADER_BYTES
    hc.h2_max_concurrent_streams = 16
    hc.read_timeout = READ_TIMEOUT
    hc.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    hc.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    hc.max_app_queue_size = 4
    hc.websocket_max_message_size = 1024
    hc.graceful_timeout = GRACEFUL_TIMEOUT
    hc.startup_timeout = 5
    hc.shutdown_timeout = 1
    hc.backlog = 128
    return hc


def plan_servers(
    metrics: Endpoint | None, health: Endpoint | None
) -> list[tuple[str, int, Routes, list[str]]]:
    """(host, port, routes, roles) per socket; endpoints sharing a fixed host:port share one."""
    out: list[tuple[str, int, Routes, list[str]]] = []
    m_path = metrics.path if metrics else None
    h_prefix = health.path.rstrip("/") if health else None
    if metrics and health and metrics.port and (metrics.bind_host, metrics.port) == (
        health.bind_host,
        health.port,
    ):
        out.append((metrics.bind_host, metrics.port, Routes(m_path, h_prefix),
                    ["metrics", "health"]))
        return out
    if metrics:
        out.append((metrics.bind_host, metrics.port, Routes(metrics_path=m_path), ["metrics"]))
    if health:
        out.append((health.bind_host, health.port, Routes(health_prefix=h_prefix), ["health"]))
    return out


def bind_socket(host: str, port: int, key: str) -> socket.socket:
    """A listening TCP socket, or a ConfigError naming the endpoint key."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except socket.gaierror as exc:
        raise ConfigError(key, f"cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(hypercorn_config().backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(key, f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                          ) from None
    return sock


async def serve_admin(
    runtime: Runtime,
    *,
    task_status: trio.TaskStatus[dict[str, tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the metrics and health endpoints until cancelled.

    `task_status.started({"metrics": (host, port), "health": (host, port)})` reports the
    really bound addresses (only the enabled ones).
    """
    admin = runtime.config.admin
    install_collectors(runtime.registry, runtime.stats, runtime.config, runtime.health)
    plans = plan_servers(admin.metrics_endpoint, admin.healthcheck_endpoint)
    sockets: list[socket.socket] = []
    bound: dict[str, tuple[str, int]] = {}
    try:
        for host, port, _routes, roles in plans:
            key = "admin.metrics_endpoint" if "metrics" in roles else "admin.healthcheck_endpoint"
            sock = bind_socket(host, port, key)
            sockets.append(sock)
            addr = sock.getsockname()
            for role in roles:
                bound[role] = (addr[0], addr[1])
        async with trio.open_nursery() as nursery:
            for sock, (_, _, routes, _) in zip(sockets, plans, strict=True):
                app: Any = AdminApp(runtime, routes)
                await nursery.start(_serve_socket, wrap_app(app, 0, "asgi"), sock)
            task_status.started(bound)
    finally:
        for sock in sockets:
            sock.close()


class _BoundedStream:
    """A connection as hypercorn's TCP server sees it, with sends that cannot hang.

    hypercorn writes responses inside a cancel shield without a deadline, so a client
    that stops reading (zero TCP window) would hold that task, and relay's shutdown, for
    ever.  Here every send has a deadline, and `abort()` (called when the admin server
    stops) ends a pending send at once; either way the connection is closed.
    """

    __slots__ = ("_closed", "_live", "_send_scope", "_stream")

    def __init__(self, stream: trio.SocketStream, live: set[_BoundedStream]) -> None:
        self._stream = stream
        self._send_scope: trio.CancelScope | None = None
        self._closed = False
        self._live = live  # the server's open connections; we leave it when the client does
        live.add(self)

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("connection aborted")
        with trio.CancelScope(deadline=trio.current_time() + SEND_TIMEOUT) as scope:
            self._send_scope = scope
            await self._stream.send_all(data)
        self._send_scope = None
        if scope.cancelled_caught:
            self.abort()
            raise trio.BrokenResourceError("the client stopped reading")

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        if not data:
            self._live.discard(self)  # the client is gone; hypercorn may linger a while
        return data

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        self._live.discard(self)
        await self._stream.aclose()

    def abort(self) -> None:
        self._closed = True
        self._live.discard(self)
        if self._send_scope is not None:
            self._send_scope.cancel()
        self._stream.socket.close()  # wakes a pending receive with ClosedResourceError


async def _serve_socket(
    app: Any,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's HTTP/1.1 and h2c protocol over one pre-bound socket, bounded everywhere.

    The same steps as hypercorn's Trio worker (lifespan, accept loop, one task per
    connection), except that connections get `_BoundedStream` and are aborted when this
    server is cancelled, so stopping is prompt whatever the clients do.
    """
    config = hypercorn_config()
    config.set_statsd_logger_class(StatsdLogger)
    context = WorkerContext(None)
    state: dict[str, Any] = {}
    live: set[_BoundedStream] = set()  # connections whose client is still there (the cap)
    conns: set[_BoundedStream] = set()  # every connection task still running (aborted at stop)

    async def handle(stream: trio.SocketStream) -> None:
        if len(live) >= MAX_CONNECTIONS:
            await stream.aclose()  # a flood of idle connections cannot exhaust our fds
            return
        conn: Any = _BoundedStream(stream, live)
        conns.add(conn)
        try:
            server: Any = TCPServer(app, config, context, ConnectionState(state.copy()), conn)
            await server.run()
        finally:
            live.discard(conn)
            conns.discard(conn)

    lifespan = Lifespan(app, config, state)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        listener = trio.socket.from_stdlib_socket(sock)
        async with trio.open_nursery() as conn_nursery:
            # Our accept loop: EMFILE backs off, counted, one log line a second at most.
            await conn_nursery.start(functools.partial(
                serve_accepts, [listener], handle, where="admin_accept", reserved=True))
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                await context.terminated.set()
                for conn in list(conns):
                    conn.abort()
        with trio.move_on_after(1, shield=True):
            await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
