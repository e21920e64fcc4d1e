"""The signaling server's I/O shell: one HTTP port for `/spreed` (WebSocket) and the HTTP API.

Each TCP connection is read by h11 with bounded request sizes and a timeout for slow
clients. `GET /spreed` with a WebSocket upgrade switches the connection to wsproto; other
paths are `/api/v1/welcome` (public), `POST /api/v1/room/{roomid}` (Nextcloud, signed;
see `room_api`), `/api/v1/stats`, `/api/v1/serverinfo` and `/metrics` (behind the
`stats.allowed_ips` gate).
A WebSocket connection has a reader (frames → hub) and a writer
(hub's queued messages → frames, plus the RTT ping); the hub never waits for a socket.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import http
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote

import h11
import trio
from prometheus_client import CollectorRegistry, generate_latest
from wsproto.connection import Connection as WsProto
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from relay.access import is_allowed, is_trusted_proxy, real_client_ip
from relay.config.signaling import SignalingConfig
from relay.errors import ConfigError
from relay.fdlimit import serve_accepts
from relay.runtime import Runtime
from relay.signaling import room_api, turn_credentials
from relay.signaling.backend import BackendClient, BackendRequester
from relay.signaling.geoip import GeoIP
from relay.signaling.hub import Hub
from relay.signaling.metrics import SignalingCollector, SignalingStats
from relay.signaling.protocol import FEATURES, error_message
from relay.signaling.ratelimit import TOO_MANY_REQUESTS, MessageRate, RateVerdict
from relay.signaling.turn_credentials import TurnServers

log = logging.getLogger("relay.signaling")

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 256 * 1024
REQUEST_TIMEOUT = 10.0  # to send a whole request (slow clients are dropped)
MAX_REQUESTS_PER_CONNECTION = 100
WRITE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # to wait for the peer's close frame
SEND_QUEUE_BYTES = 4 * 1024 * 1024  # queued for one client before it counts as too slow
READ_CHUNK = 65536
FAIR_READS = 16  # consecutive reads on one socket before yielding to other tasks
FAIR_MESSAGES = 8  # messages handled from one read before yielding to other tasks
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011


class WsConnection:
    """One WebSocket client: the hub's `Connection` (send_text/close never block).

    A frame is written straight to the non-blocking socket when nothing is queued (no task
    hop on the common path); what the kernel does not take is queued for the writer task,
    which also sends the RTT pings and the close frame.
    """

    def __init__(
        self, stream: trio.SocketStream, ws: WsProto, hub: Hub, config: SignalingConfig
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.hub = hub
        self.config = config
        self.stats = hub.stats
        self.remote_ip = ""  # the client's address (trusted proxies' headers applied)
        self.user_agent = ""  # of the upgrade request
        self._fd = stream.socket.fileno()
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._writing = False
        self._lot = trio.lowlevel.ParkingLot()
        self._close: tuple[int, str] | None = None
        self._broken = False
        self._peer_closed = trio.Event()
        self._parts: list[str] = []  # text of a fragmented message so far
        self._size = 0
        self._rate = MessageRate(config.message_rate, config.message_burst)

    # hub-facing
    def send_text(self, text: str) -> None:
        if self._close is not None or self.ws.state is not ConnectionState.OPEN:
            return  # closing (a peer's close frame may come in the same read as its bye)
        self.stats.messages_out += 1
        self.stats.bytes_out += len(text)
        self._push(self.ws.send(Message(data=text)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._close is None:
            self._close = (code, reason)
            self._lot.unpark_all()

    def _push(self, data: bytes) -> None:
        if self._broken or self._close is not None:
            return  # after close() only the writer's close frame goes out
        if not self._queue and not self._writing:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                n = 0
            except OSError:
                self._broken = True
                self.close(CLOSE_INTERNAL, "")
                return
            if n == len(data):
                return
            data = data[n:]
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > SEND_QUEUE_BYTES and self._close is None:
            self.stats.slow_clients_closed += 1
            self.close(CLOSE_POLICY, "too slow")
        self._lot.unpark_all()

    async def run(self) -> None:
        self.hub.connect(self)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                await self._reader()
                self.close()
        finally:
            self.hub.disconnect(self)

    async def _reader(self) -> None:
        timer = trio.CancelScope()
        with timer:
            await self._read_loop(timer)
        if timer.cancelled_caught:
            # no frame for read_timeout (the pings keep live clients talking)
            self.close(CLOSE_POLICY, "read timeout")

    async def _read_loop(self, timer: trio.CancelScope) -> None:
        fd = self._fd
        reads = 0
        if not await self._handle_events():  # frames that came with the upgrade request
            return
        while self._close is None:
            # Plain non-blocking reads; wait for readiness only when the socket is empty,
            # and let other tasks run every few reads so a busy client cannot hog the loop.
            try:
                data = os.read(fd, READ_CHUNK)
                reads += 1
                if reads >= FAIR_READS:
                    reads = 0
                    await trio.lowlevel.checkpoint()
            except BlockingIOError:
                reads = 0
                timer.deadline = trio.current_time() + self.config.read_timeout
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    data = b""
                else:
                    timer.deadline = math.inf  # handling a message may wait for Nextcloud
                    continue
            except OSError:  # reset by the peer
                data = b""
            if not data:
                self._peer_closed.set()
                return
            try:
                self.ws.receive_data(data)
            except RemoteProtocolError:
                self.close(CLOSE_PROTOCOL_ERROR, "protocol error")
                return
            if not await self._handle_events():
                return

    async def _handle_events(self) -> bool:
        """Act on the frames wsproto has parsed; False once the connection is done."""
        limit = self.config.max_message_size
        handled = 0
        # Frames are parsed one at a time, not all of a 64 KiB read up front, so a yield
        # every FAIR_MESSAGES messages really bounds the work between two media passes.
        events = self.ws.events()
        while True:
            try:
                event = next(events)
            except StopIteration:
                return True
            except RemoteProtocolError:
                self.close(CLOSE_PROTOCOL_ERROR, "protocol error")
                return False
            if isinstance(event, Message):
                self._size += len(event.data)
                if self._size > limit:
                    self.close(CLOSE_TOO_BIG, "message too big")
                    return False
                if isinstance(event, TextMessage):
                    self._parts.append(event.data)
                if not event.message_finished:
                    continue
                nbytes, self._size = self._size, 0
                self.stats.messages_in += 1
                handled += 1
                if handled % FAIR_MESSAGES == 0:
                    await trio.lowlevel.checkpoint()  # the media path runs between batches
                    if self._close is not None:
                        return False
                verdict = self._rate.take(trio.current_time())
                if verdict is not RateVerdict.OK:
                    self._parts = []
                    if not self._refuse(verdict):
                        return False
                    continue
                if isinstance(event, BytesMessage):
                    self.stats.bytes_in += nbytes
                    self.hub.receive_binary(self)
                    continue
                parts = self._parts
                text = parts[0] if len(parts) == 1 else "".join(parts)
                self._parts = []
                if nbytes > limit // 4:  # characters; the limit is in bytes
                    nbytes = len(text.encode("utf-8"))
                    if nbytes > limit:
                        self.close(CLOSE_TOO_BIG, "message too big")
                        return False
                self.stats.bytes_in += nbytes
                try:
                    await self.hub.receive(self, text)
                except Exception:
                    log.exception("signaling: error handling a client message")
                    self.close(CLOSE_INTERNAL, "internal error")
                    return False
                if self._close is not None:
                    return False
            elif isinstance(event, Ping):
                self._push(self.ws.send(event.response()))
            elif isinstance(event, Pong):
                self._pong(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                self._peer_closed.set()
                self.close(event.code, "")
                return False

    def _refuse(self, verdict: RateVerdict) -> bool:
        """A message over the rate limit, dropped unhandled: answer `too_many_requests`
        once per run; close 1008 when the client sends through it. False once closing."""
        self.stats.messages_ratelimited += 1
        if verdict is RateVerdict.CLOSE:
            self.stats.ratelimit_closed += 1
            self.close(CLOSE_POLICY, "too many messages")
            return False
        if verdict is RateVerdict.REFUSE:
            self.send_text(json.dumps(error_message(None, *TOO_MANY_REQUESTS)))
        return True

    def _pong(self, payload: bytes) -> None:
        self.stats.bytes_in += len(payload)
        try:
            sent = int(payload)
        except ValueError:
            return
        rtt_ms = (time.monotonic_ns() - sent) / 1e6
        if 0 <= rtt_ms < 3.6e6:
            self.stats.client_rtt.observe(rtt_ms)

    async def _writer(self, scope: trio.CancelScope) -> None:
        cfg = self.config
        next_ping = trio.current_time()  # upstream pings right away, then every 54 s
        try:
            while True:
                if not self._queue and self._close is None:
                    with trio.move_on_at(next_ping):
                        await self._lot.park()
                    if trio.current_time() >= next_ping and self._close is None:
                        payload = str(time.monotonic_ns()).encode()
                        self.stats.bytes_out += len(payload)
                        self._push(self.ws.send(Ping(payload=payload)))
                        next_ping = trio.current_time() + cfg.ping_interval
                    continue
                if self._queue:
                    data = b"".join(self._queue)
                    self._queue.clear()
                    self._queued = 0
                    self._writing = True
                    ok = await self._write(data)
                    self._writing = False
                    if not ok:
                        return
                    continue
                break  # closing, everything queued before the close is out
            code, reason = self._close or (1000, "")
            if not self._broken and self.ws.state in (
                ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING
            ):
                try:
                    data = self.ws.send(CloseConnection(code=code, reason=reason))
                except Exception:
                    data = b""
                if data and await self._write(data) and not self._peer_closed.is_set():
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await self._peer_closed.wait()
        finally:
            scope.cancel()

    async def _write(self, data: bytes) -> bool:
        with trio.move_on_after(WRITE_TIMEOUT):
            try:
                await self.stream.send_all(data)
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken = True
                return False
        self._broken = True
        return False


class SignalingServer:
    """The HTTP front: routes requests, upgrades `/spreed`, serves the hub."""

    def __init__(
        self, runtime: Runtime, hub: Hub, turn_servers: TurnServers | None = None
    ) -> None:
        self.runtime = runtime
        self.hub = hub
        self.turn_servers = turn_servers  # relay's own TURN URIs, once the gateway is bound
        # This port's /metrics: the signaling families only.  The TURN, process and relay_
        # families are served once, on admin.metrics_endpoint, so scraping both ports never
        # counts a family twice.
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(SignalingCollector(hub.stats, hub.gauges))
        self.config = signaling_config(runtime)
        self._head: set[h11.Connection] = set()  # connections answering a HEAD request
        self.common_headers = [
            (b"Server", f"relay/{runtime.version}".encode()),
            (b"X-Spreed-Signaling-Features", ", ".join(sorted(FEATURES)).encode()),
        ]

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._handle(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("signaling: connection handler failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = str(stream.socket.getpeername()[0])
        except OSError:
            return
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            request: h11.Request | None = None
            body_size = 0
            body: list[bytes] = []
            partial = False
            with trio.move_on_after(REQUEST_TIMEOUT) as timer:
                while True:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError as exc:
                        await self._error(stream, conn, exc.error_status_hint, "Bad Request")
                        return
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(READ_CHUNK)
                        partial = partial or bool(data)
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                        if head_size(event) > MAX_HEADER_BYTES:  # whole but too large
                            await self._error(
                                stream, conn, 431, "Request Header Fields Too Large")
                            return
                        if _declared_length(event) > MAX_BODY_BYTES:  # refused unread
                            await self._error(stream, conn, 413, "Request Entity Too Large")
                            return
                    elif isinstance(event, h11.Data):
                        body_size += len(event.data)
                        if body_size > MAX_BODY_BYTES:
                            await self._error(stream, conn, 413, "Request Entity Too Large")
                            return
                        body.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
            if timer.cancelled_caught or request is None:
                if partial:
                    await self._timeout(stream, conn)
                return
            if request.method == b"HEAD":
                self._head.add(conn)
            try:
                if not await self._route(stream, conn, peer, request, b"".join(body)):
                    return
            finally:
                self._head.discard(conn)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _route(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        peer: str,
        req: h11.Request,
        body: bytes = b"",
    ) -> bool:
        """Answer one request; False when the connection is done (or became a WebSocket)."""
        path = req.target.split(b"?", 1)[0].decode("latin-1")
        method = req.method
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers]
        if path.startswith(room_api.ROOM_PATH_PREFIX):
            return await self._room_request(stream, conn, req, path, headers, body, peer)
        routes = {"/spreed", "/api/v1/welcome", "/api/v1/stats", "/metrics",
                  "/api/v1/serverinfo", "/turn/credentials"}
        if path not in routes:
            return await self._error(stream, conn, 404, "Not Found")
        if method not in (b"GET", b"HEAD"):
            return await self._error(
                stream, conn, 405, "Method Not Allowed", [(b"Allow", b"GET, HEAD")])
        if path == "/spreed":
            return await self._upgrade(stream, conn, req, headers, peer)
        if path == "/turn/credentials":
            query = req.target.partition(b"?")[2].decode("latin-1")
            cred = turn_credentials.handle(
                query, self.config.turn, self.turn_servers, time.time())
            return await self._respond(stream, conn, cred.status, cred.body, cred.content_type)
        if path == "/api/v1/welcome":
            welcome = json.dumps({"nextcloud-spreed-signaling": "Welcome",
                                  "version": self.runtime.version}) + "\n"
            return await self._respond(stream, conn, 200, welcome.encode(), b"application/json")
        stats_cfg = self.runtime.config.stats
        if not is_allowed(peer, headers, stats_cfg.allowed_ips, stats_cfg.trusted_proxies):
            return await self._error(stream, conn, 403, "Authentication check failed")
        if path == "/api/v1/serverinfo":
            info = self.hub.internal.serverinfo(self.runtime.version)
            return await self._respond(
                stream, conn, 200, json.dumps(info, indent=2).encode(),
                b"application/json; charset=utf-8", [(b"X-Content-Type-Options", b"nosniff")])
        if path == "/api/v1/stats":
            stats = json.dumps(self.hub.stats_json()).encode() + b"\n"
            return await self._respond(stream, conn, 200, stats, b"application/json")
        return await self._respond(
            stream, conn, 200, generate_latest(self.registry), METRICS_CONTENT_TYPE
        )

    async def _room_request(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        req: h11.Request,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        peer: str,
    ) -> bool:
        """`POST /api/v1/room/{roomid}`: Nextcloud's signed room requests."""
        room_id = unquote(path[len(room_api.ROOM_PATH_PREFIX):])
        if not room_id or "/" in room_id:
            return await self._error(stream, conn, 404, "Not Found")
        if req.method != b"POST":
            return await self._error(
                stream, conn, 405, "Method Not Allowed", [(b"Allow", b"POST")])
        hdr: dict[str, str] = {}
        for k, v in headers:
            hdr.setdefault(k.lower(), v)
        answer = await room_api.handle(self.hub, room_id, hdr, body, "content-length" in hdr,
                                       self._client_ip(peer, headers))
        extra = [(b"X-Content-Type-Options", b"nosniff")] if answer.status == 200 else None
        return await self._respond(
            stream, conn, answer.status, answer.body, answer.content_type, extra)

    async def _respond(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        headers = [
            *self.common_headers,
            # Talk's admin check compares Date with its own clock (TIME_OUT_OF_SYNC)
            (b"Date", _http_date()),
            (b"Content-Type", content_type),
            (b"Content-Length", str(len(body)).encode()),
            *(extra or []),
        ]
        keep = conn.their_state is h11.DONE
        if not keep:
            headers.append((b"Connection", b"close"))
        data = conn.send(h11.Response(
            status_code=status, headers=headers, reason=_reason(status))) or b""
        if conn not in self._head:  # HEAD: the headers of the GET answer, no body
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        with trio.move_on_after(WRITE_TIMEOUT):
            await stream.send_all(data)
            return keep
        return False

    async def _error(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        status: int,
        text: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        try:
            return await self._respond(
                stream, conn, status, (text + "\n").encode(), b"text/plain; charset=utf-8", extra
            )
        except h11.LocalProtocolError:
            return False

    async def _timeout(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        """408 for a request that did not arrive in time (h11 cannot answer before it has one)."""
        if conn.our_state is h11.SEND_RESPONSE:
            await self._error(stream, conn, 408, "Request Timeout")
            return
        body = b"Request Timeout\n"
        head = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
        head += b"Date: " + _http_date() + b"\r\n"
        head += b"Content-Type: text/plain; charset=utf-8\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        with trio.move_on_after(WRITE_TIMEOUT):
            await stream.send_all(head + body)

    async def _upgrade(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        req: h11.Request,
        headers: list[tuple[str, str]],
        peer: str,
    ) -> bool:
        hdr: dict[str, str] = {}
        for k, v in headers:
            hdr.setdefault(k.lower(), v)
        tokens = {t.strip().lower() for t in hdr.get("connection", "").split(",")}
        key = hdr.get("sec-websocket-key", "")
        if (
            "upgrade" not in tokens
            or hdr.get("upgrade", "").lower() != "websocket"
            or hdr.get("sec-websocket-version") != "13"
            or not _valid_key(key)
            or conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL  # type: ignore[attr-defined]
        ):
            await self._error(stream, conn, 400, "Bad Request: a WebSocket upgrade is expected")
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest())
        data = conn.send(h11.InformationalResponse(status_code=101, headers=[
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", accept),
            *self.common_headers,
            (b"Date", _http_date()),
        ], reason=b"Switching Protocols")) or b""
        with trio.move_on_after(WRITE_TIMEOUT) as timer:
            await stream.send_all(data)
        if timer.cancelled_caught:
            return False
        trailing, _closed = conn.trailing_data
        ws = WsProto(ConnectionType.SERVER, extensions=None, trailing_data=bytes(trailing))
        client = WsConnection(stream, ws, self.hub, self.config)
        client.remote_ip = self._client_ip(peer, headers)
        client.user_agent = hdr.get("user-agent", "")
        await client.run()
        return False

    def _client_ip(self, peer: str, headers: list[tuple[str, str]]) -> str:
        """The client's IP for throttling and GeoIP (upstream's `GetRealUserIP`)."""
        ip = real_client_ip(peer, headers, self.runtime.config.stats.trusted_proxies)
        return str(ip) if ip is not None else peer


def _http_date() -> bytes:
    return email.utils.formatdate(usegmt=True).encode()


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def head_size(req: h11.Request) -> int:
    """Bytes of the request line and header fields as sent (h11 only bounds a head that
    arrives in pieces; one that arrives whole is measured here)."""
    size = len(req.method) + len(req.target) + 12  # "M T HTTP/1.1\r\n"
    for name, value in req.headers:
        size += len(name) + len(value) + 4  # "name: value\r\n"
    return size


def _declared_length(req: h11.Request) -> int:
    for k, v in req.headers:
        if k == b"content-length":  # h11 lower-cases names and has validated the value
            return int(v)
    return 0


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def signaling_config(runtime: Runtime) -> SignalingConfig:
    """The `signaling` section of `runtime`'s config; a ConfigError when there is none."""
    cfg = runtime.config.signaling
    if cfg is None:
        raise ConfigError("signaling", "is not configured")
    return cfg


def build(
    runtime: Runtime, backend: BackendRequester | None = None
) -> tuple[Hub, BackendClient | None]:
    """The hub wired to a backend client."""
    cfg = signaling_config(runtime)
    stats = SignalingStats()
    client: BackendClient | None = None
    if backend is None:
        client = backend = BackendClient(
            stats,
            timeout=cfg.backend_timeout,
            connections_per_host=cfg.connections_per_host,
            user_agent=f"relay/{runtime.version}",
        )
    try:
        geoip = GeoIP(cfg.geoip_overrides, cfg.geoip_file)
    except (OSError, ValueError, RuntimeError) as exc:  # not an .mmdb: InvalidDatabaseError
        raise ConfigError("signaling.geoip.url", f"cannot read the database: {exc}") from None
    hub = Hub(cfg, backend, stats, version=runtime.version, geoip=geoip)
    return hub, client


async def serve_signaling(
    runtime: Runtime,
    on_hub: Callable[[Hub], None] | None = None,
    *,
    turn_servers: TurnServers | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind `signaling.http.listen`, report (host, bound port), serve until cancelled.
    `turn_servers`: relay's own TURN URIs for `/turn/credentials` (filled by the app once
    the gateway is bound; used when `signaling.turn.servers` is empty). `on_hub(hub)` hands
    the hub to whoever reloads and drains it."""
    cfg = signaling_config(runtime)
    hub, client = build(runtime)
    if on_hub is not None:
        on_hub(hub)
    try:
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
    except OSError as exc:  # a port in use, an address not on this host: say which
        raise ConfigError(cfg.listen_key, f"cannot listen on {cfg.listen_display}: "
                          f"{exc.strerror or exc}") from None
    server = SignalingServer(runtime, hub, turn_servers)
    port = listeners[0].socket.getsockname()[1]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            await nursery.start(functools.partial(
                serve_accepts, [lis.socket for lis in listeners], server.handle,
                where="signaling_accept", per_ip=cfg.max_connections_per_ip,
                exempt=functools.partial(
                    is_trusted_proxy,
                    trusted_proxies=runtime.config.stats.trusted_proxies)))
            log.info("signaling: ws://%s/spreed", f"{cfg.host}:{port}")
            task_status.started((cfg.host, port))
    finally:
        for lis in listeners:
            await trio.aclose_forcefully(lis)
        if client is not None:
            with trio.move_on_after(1.0, shield=True):
                await client.aclose()
