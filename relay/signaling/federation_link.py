"""I/O shell of a federation link: runs `federation.LinkCore` over a trio-websocket client.

The hub creates one `FederationLink` per federated session and runs `link.run` in a nursery
it owns. The link dials the remote `/spreed`, passes frames and connection events to the
core, applies the core's effects (frames to the remote through a bounded outbox, messages
to the local client through the hub's `deliver` callback), keeps the connection alive with
pings, and reconnects with the core's backoff. `run` returns once the link is over; it never
raises (except `Cancelled`): every failure reaches the local client as an error message.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
)

from relay.signaling import federation as fed
from relay.signaling import protocol as p

log = logging.getLogger("relay.signaling.federation")

DEFAULT_TIMEOUT = 10.0  # dial, handshake (welcome + hello answer), leave answer
PING_INTERVAL = 54.0  # WebSocket ping period; a pong must come back within the timeout
WRITE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # bounded, shielded close of the WebSocket
MAX_MESSAGE_SIZE = 64 * 1024
MAX_OUTBOX = 256  # frames waiting for the remote; more means it stopped reading

Deliver = Callable[[dict[str, Any]], None]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out.extend(_leaves(e))
        return out
    return [exc]


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(details code, message) of a dial failure, as upstream reports them."""
    for leaf in _leaves(exc):
        e: BaseException | None = leaf
        while e is not None:
            if isinstance(e, ssl.SSLCertVerificationError):
                return fed.CERTIFICATE_ERROR, str(e)
            e = e.__cause__ or e.__context__
    leaf = _leaves(exc)[0]
    if isinstance(leaf, trio.TooSlowError):
        return fed.NETWORK_ERROR, "Timeout connecting to the remote server."
    return fed.NETWORK_ERROR, str(leaf) or type(leaf).__name__


class FederationLink:
    """A federated session's connection to a remote signaling server.

    `deliver(message)` is called (synchronously, from the link task) with every message for
    the local client, already mapped to local ids: relayed remote messages and events,
    `federation_interrupted` / `federation_resumed` events, and error answers to the
    client's join. It must not block; the hub queues the message to the client's socket.
    """

    def __init__(
        self,
        request: fed.FederationRequest,
        *,
        local_session_id: str,
        local_backend_url: str,
        deliver: Deliver,
        features: Sequence[str] = (),
        join_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float = PING_INTERVAL,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.core = fed.LinkCore(
            request,
            local_session_id=local_session_id,
            local_backend_url=local_backend_url,
            features=features,
            join_id=join_id,
        )
        self.backoff = fed.Backoff()
        self.timeout = timeout
        self.ping_interval = ping_interval
        self._deliver = deliver
        self._ssl_context = ssl_context
        self._ws: WebSocketConnection | None = None
        self._outbox: deque[str] = deque()
        self._wake = trio.Event()
        self._conn_scope: trio.CancelScope | None = None  # the current connection's tasks
        self._wait_scope: trio.CancelScope | None = None  # the backoff sleep
        self._leave_deadline: float | None = None
        self._finishing = False  # Finish seen: flush, bye, close
        self._finished = trio.Event()
        self.attempts = 0  # dials so far (reconnects included)

    # --- hub-facing API (synchronous, never blocks)

    @property
    def request(self) -> fed.FederationRequest:
        return self.core.request

    @property
    def remote_session_id(self) -> str:
        return self.core.remote_session_id

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def can_reuse(self, request: fed.FederationRequest) -> bool:
        return not self._finishing and self.core.request.can_reuse(request)

    def forward(self, env: dict[str, Any]) -> None:
        """Relay a client message (not hello/room/bye); the link owns `env` afterwards.

        Raises `SignalingError` (answer it to the client) when the link cannot take it.
        """
        if self._finishing:
            raise p.SignalingError("federation_error", "The federation link is closed.")
        self._apply(self.core.forward(env))

    def change_room(self, request: fed.FederationRequest, join_id: str | None) -> None:
        """Join another room of the same remote (only when `can_reuse(request)`)."""
        if self._finishing:
            raise p.SignalingError("federation_error", "The federation link is closed.")
        self._apply(self.core.change_room(request, join_id))

    def leave(self, env: dict[str, Any] | None = None) -> None:
        """Leave the remote room; the remote's `room` answer reaches the client, then the
        link ends (after `timeout` at the latest)."""
        self._apply(self.core.leave(env))
        if not self._finishing:
            self._leave_deadline = trio.current_time() + self.timeout
            if self._conn_scope is not None:
                self._conn_scope.deadline = min(self._conn_scope.deadline, self._leave_deadline)

    def close(self) -> None:
        """End the link (with `bye` when connected); `run` returns soon after."""
        self._apply(self.core.close())

    async def wait_finished(self) -> None:
        await self._finished.wait()

    # --- the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while not self._finishing:
                await self._connection()
                if self._finishing:
                    break
                with trio.CancelScope(
                    deadline=self.backoff.schedule(trio.current_time())
                ) as self._wait_scope:
                    await trio.sleep_forever()
                self._wait_scope = None
        except Exception:  # a bug of ours: the client gets an error, never a traceback
            log.exception("federation link to %s failed", self.request.signaling_url)
            effects = self.core.internal_error()
            self._finishing = True
            self._apply([e for e in effects if isinstance(e, fed.Deliver)])
        finally:
            self._finished.set()

    async def _connection(self) -> None:
        """One connection: dial, run until it ends, keep the core informed."""
        self.attempts += 1
        self._outbox.clear()
        made = False
        try:
            async with trio.open_nursery() as nursery:  # hosts trio-websocket's reader task
                with trio.CancelScope() as self._conn_scope:
                    if self._leave_deadline is not None:
                        self._conn_scope.deadline = self._leave_deadline
                    try:
                        ws = await self._dial(nursery)
                    except Exception as exc:
                        code, message = classify_failure(exc)
                        self._apply(self.core.connection_failed(code, message))
                    else:
                        self._ws = ws
                        made = True
                        try:
                            features = fed.header_features(ws.handshake_headers)
                            self._apply(self.core.connection_made(features))
                            if self.core.connected:
                                await self._serve(ws)
                        finally:
                            await self._shutdown(ws)
                nursery.cancel_scope.cancel()
        except Exception as exc:
            # trio-websocket's reader task failed (rejected upgrade, protocol error, ...)
            if not made:
                code, message = classify_failure(exc)
                self._apply(self.core.connection_failed(code, message))
            else:
                log.warning(
                    "federation connection to %s failed", self.request.signaling_url, exc_info=exc
                )
        finally:
            self._ws = None
            self._conn_scope = None
        if made and not self._finishing:
            if self._leave_deadline is not None and trio.current_time() >= self._leave_deadline:
                self._apply(self.core.leave_timed_out())
            else:
                self._apply(self.core.connection_lost())

    async def _dial(self, nursery: trio.Nursery) -> WebSocketConnection:
        """TCP, TLS (verified unless the hub passes a lax context), then the upgrade.

        The TLS handshake is done here rather than inside trio-websocket so that a
        certificate failure is reported as such instead of as a hang.
        """
        parts = urlsplit(self.request.websocket_url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        resource = parts.path + (f"?{parts.query}" if parts.query else "")
        host_header = host if port == (443 if secure else 80) else f"{host}:{port}"
        with trio.fail_after(self.timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
            try:
                if secure:
                    ctx = self._ssl_context or ssl.create_default_context()
                    stream = trio.SSLStream(tcp, ctx, server_hostname=host, https_compatible=True)
                    await stream.do_handshake()
                return await wrap_client_stream(
                    nursery, stream, host_header, resource, max_message_size=MAX_MESSAGE_SIZE
                )
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise

    async def _serve(self, ws: WebSocketConnection) -> None:
        """Reader, writer, keepalive and handshake timer; returns when the connection ends."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, ws, nursery.cancel_scope)
            nursery.start_soon(self._keepalive, ws, nursery.cancel_scope)
            nursery.start_soon(self._handshake_timer)
            await self._reader(ws)
            if not self._finishing:
                nursery.cancel_scope.cancel()
            # else the writer flushes the outbox (bye last), then ends the connection

    async def _reader(self, ws: WebSocketConnection) -> None:
        while not self._finishing:
            try:
                frame = await ws.get_message()
            except ConnectionClosed:
                return
            if isinstance(frame, str):
                try:
                    effects = self.core.receive(frame)
                except Exception:
                    log.exception("handling a frame from %s failed", self.request.signaling_url)
                    effects = self.core.internal_error()
                self._apply(effects)
            # binary frames are ignored, as upstream does

    async def _writer(self, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        while True:
            while self._outbox:
                text = self._outbox.popleft()
                try:
                    with trio.fail_after(WRITE_TIMEOUT):
                        await ws.send_message(text)
                except (ConnectionClosed, trio.TooSlowError):
                    scope.cancel()
                    return
            if self._finishing:
                scope.cancel()  # outbox (bye included) flushed: end the connection
                return
            self._wake = trio.Event()
            await self._wake.wait()

    async def _keepalive(self, ws: WebSocketConnection, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self.ping_interval)
            try:
                with trio.fail_after(self.timeout):
                    await ws.ping()
            except (ConnectionClosed, trio.TooSlowError, trio.BrokenResourceError):
                scope.cancel()
                return

    async def _handshake_timer(self) -> None:
        await trio.sleep(self.timeout)
        self._apply(self.core.handshake_timed_out())

    async def _shutdown(self, ws: WebSocketConnection) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
            try:
                await ws.aclose()
            except Exception:  # closing a broken connection: nothing left to do
                log.debug("closing federation connection failed", exc_info=True)

    # --- effects

    def _apply(self, effects: list[fed.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, fed.Send):
                self._send(p.encode(effect.message))
            elif isinstance(effect, fed.Deliver):
                self._safe_deliver(effect.message)
            elif isinstance(effect, fed.Reconnect):
                self._end_connection()
            elif isinstance(effect, fed.Finish):
                self._finish()

    def _send(self, text: str) -> None:
        if self._ws is None or self._finishing:
            return
        if len(self._outbox) >= MAX_OUTBOX:
            log.warning("remote %s does not read; reconnecting", self.request.signaling_url)
            self._outbox.clear()
            self._end_connection()
            return
        self._outbox.append(text)
        self._wake.set()

    def _safe_deliver(self, message: dict[str, Any]) -> None:
        try:
            self._deliver(message)
        except Exception:
            log.exception("delivering a federated message failed")

    def _end_connection(self) -> None:
        if self._conn_scope is not None:
            self._conn_scope.cancel()

    def _finish(self) -> None:
        if self._finishing:
            return
        self._finishing = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        if self._ws is not None and self._conn_scope is not None:
            self._outbox.append(p.encode(p.bye_message()))  # the writer sends it, then closes
            self._wake.set()
            # bounded: a remote that does not read must not keep the link alive
            self._conn_scope.deadline = min(
                self._conn_scope.deadline, trio.current_time() + WRITE_TIMEOUT
            )
        else:
            self._end_connection()
