"""TURN over TCP and TLS (RFC 8656 §3.1): the stream listeners' connections.

The control connection is a byte stream carrying STUN messages (framed by 20 + the header's
length) and ChannelData messages (4 + length, padded to a multiple of 4, RFC 8656 §12.5),
cut into messages by the codec's `StreamFramer`; the relayed transport is still UDP.  I/O
only: requests go to the gateway's `answer` (the sans-IO core, its effects performed) with
the connection's remote address as the client, and client -> peer data goes through the
same forwarding code as the UDP listener's (`relay.net.forward`).

A connection sees the gateway only through `StreamHost`: the counters, the peer policy,
`answer`, and being told when a connection opens and closes.  This module does not import
the gateway.

Each connection runs in its own nursery:
- the reader frames what arrives (split and merged frames alike); bytes that are neither
  STUN nor ChannelData (`FramingError`) close the connection (counted as
  `drops["malformed"]`);
- the writer flushes the send queue with one `send_all` per batch.  Peer -> client data
  is queued by `send_frame`, which the gateway's synchronous `relay_reader` calls: it never
  blocks; past `SEND_QUEUE_LIMIT` queued bytes it raises BlockingIOError, counted by the
  caller as `drops["send_buffer_full"]`.

Lifecycle: the connection owns its allocation (closing the connection deletes it); deleting
the allocation (Refresh 0, expiry) leaves the connection open.  A connection without an
allocation is closed `IDLE_TIMEOUT` seconds after its start (or its allocation's end, or
its last request that made progress: a success answer to anything but a Binding), so a
client that sends nothing, a frame a byte at a time, ChannelData or Send indications
without an allocation, Bindings or unauthenticated requests does not hold it; a TLS
handshake must finish within `HANDSHAKE_TIMEOUT`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from typing import Protocol

import trio

from relay.config.tls import load_cert_chain
from relay.net.forward import forward_channel_data, forward_send_indication
from relay.stun.framing import FramingError, StreamFramer
from relay.turn.allocation import Address, Allocation
from relay.turn.policy import PeerPolicy
from relay.turn.server import ListenerState
from relay.turn.stats import TurnStats

log = logging.getLogger("relay.gateway.stream")

IDLE_TIMEOUT = 30.0  # seconds a connection may go without an allocation and a message
HANDSHAKE_TIMEOUT = 10.0  # seconds for a TLS handshake (pion's value)
SEND_QUEUE_LIMIT = 1 << 20  # bytes queued towards a client before peer data is dropped
RECV_CHUNK = 65536
_SEND_INDICATION = b"\x00\x16"
_PADS = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")
# STUN message type bits (RFC 8489 §5): class and method masks, and the values tested for
_CLASS_MASK, _SUCCESS = 0x0110, 0x0100
_METHOD_MASK, _BINDING = 0x3EEF, 0x0001


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server-side TLS context of a TURN-TLS listener (TLS 1.2 or later)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain(ctx, cert, key, "cert", "key")  # file path or inline (base64) PEM
    return ctx


class StreamHost(Protocol):
    """What a stream connection needs from the gateway, and nothing more."""

    @property
    def stats(self) -> TurnStats: ...

    @property
    def policy(self) -> PeerPolicy: ...

    def answer(self, lis: ListenerState, client: Address, data: bytes) -> bytes | None:
        """The core's reply to one STUN message, its effects already performed."""
        ...

    def connection_opened(self, conn: StreamConnection) -> None:
        """`conn` is served: allocations made on it are bound to it."""
        ...

    def connection_closed(self, conn: StreamConnection) -> None:
        """`conn` is gone: its allocation (if any) is deleted."""
        ...


class StreamConnection:
    """One TURN client's TCP or TLS control connection."""

    __slots__ = ("alloc", "client", "closed", "host", "idle", "lis", "queue", "queued",
                 "stream", "wake")

    def __init__(self, host: StreamHost, lis: ListenerState, stream: trio.abc.Stream,
                 client: Address) -> None:
        self.host = host
        self.lis = lis
        self.stream = stream
        self.client = client
        self.alloc: Allocation | None = None
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.wake = trio.Event()
        self.closed = False
        # The reader runs inside it: its deadline is the idle timeout while there is no
        # allocation, infinite while there is one.
        self.idle = trio.CancelScope(deadline=trio.current_time() + IDLE_TIMEOUT)

    # -- called synchronously by the gateway ----------------------------------------------

    def send_frame(self, data: bytes | bytearray | memoryview,
                   client: Address | None = None) -> int:
        """Queue one STUN or ChannelData message for the client (ChannelData padded to 4);
        the bytes queued.  BlockingIOError when the queue is full (the caller counts it)."""
        if self.closed:
            return 0
        n = len(data)
        if self.queued + n > SEND_QUEUE_LIMIT:
            raise BlockingIOError
        frame = bytes(data)  # `data` may be a view of a buffer reused for the next packet
        if n & 3 and frame[0] & 0xC0 == 0x40:
            frame += _PADS[n & 3]
        self.queue.append(frame)
        self.queued += len(frame)
        self.wake.set()
        return len(frame)

    def allocation_created(self, alloc: Allocation) -> None:
        self.alloc = alloc
        self.idle.deadline = float("inf")

    def allocation_deleted(self) -> None:
        self.alloc = None
        self.idle.deadline = trio.current_time() + IDLE_TIMEOUT

    # -- tasks ----------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, nursery.cancel_scope)
            with self.idle:
                await self._reader()
            nursery.cancel_scope.cancel()

    async def _writer(self, scope: trio.CancelScope) -> None:
        queue = self.queue
        try:
            while True:
                if not queue:
                    self.wake = trio.Event()
                    await self.wake.wait()
                    continue
                batch = queue[0] if len(queue) == 1 else b"".join(queue)
                queue.clear()
                self.queued = 0
                await self.stream.send_all(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # the client went away: the reader goes too

    async def _reader(self) -> None:
        lis = self.lis
        traffic = lis.stats.traffic
        drops = self.host.stats.drops
        framer = StreamFramer()
        while True:
            try:
                data = await self.stream.receive_some(RECV_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return  # EOF
            progress = False
            try:
                for frame in framer.feed(data):
                    size = len(frame)
                    traffic.rx_packets += 1
                    traffic.rx_bytes += size
                    if self._message(frame, size):
                        progress = True
            except FramingError as exc:
                drops["malformed"] += 1
                log.debug("connection %s on %s: %s, closing", self.client, lis.name, exc)
                return
            if progress and self.alloc is None:
                self.idle.deadline = trio.current_time() + IDLE_TIMEOUT
            await trio.lowlevel.checkpoint()

    def _message(self, frame: memoryview, n: int) -> bool:
        """Handle one frame; True when it made progress (a success answer to a request
        other than Binding): only that, or an allocation, keeps the connection from its
        idle timeout."""
        host = self.host
        lis = self.lis
        drops = host.stats.drops
        if frame[0] >= 0x40:  # ChannelData (the framer has classified it)
            alloc = lis.allocations.get(self.client)
            if alloc is None:
                drops["no_allocation"] += 1
            else:
                forward_channel_data(alloc, frame, n, drops)
            return False
        if frame[0:2] == _SEND_INDICATION:
            alloc = lis.allocations.get(self.client)
            if alloc is None:
                drops["no_allocation"] += 1
            else:
                forward_send_indication(alloc, frame, n, host.policy, drops)
            return False
        t0 = time.perf_counter()
        reply = host.answer(lis, self.client, bytes(frame))
        if reply is not None:
            try:
                sent = self.send_frame(reply)
                lis.stats.traffic.tx_packets += 1
                lis.stats.traffic.tx_bytes += sent
            except BlockingIOError:
                drops["send_buffer_full"] += 1
        host.stats.request_latency.observe(time.perf_counter() - t0)
        if reply is None or len(reply) < 2:
            return False
        kind = reply[0] << 8 | reply[1]
        return kind & _CLASS_MASK == _SUCCESS and kind & _METHOD_MASK != _BINDING


async def serve_connection(host: StreamHost, lis: ListenerState, ctx: ssl.SSLContext | None,
                           tcp: trio.SocketStream) -> None:
    """Serve one accepted connection until it closes, then delete its allocation."""
    stream: trio.abc.Stream = tcp
    try:
        client = tuple(tcp.socket.getpeername())
    except OSError:
        await trio.aclose_forcefully(tcp)
        return
    conn: StreamConnection | None = None
    try:
        if ctx is not None:
            tls = trio.SSLStream(tcp, ctx, server_side=True)
            stream = tls
            done = False
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                try:
                    await tls.do_handshake()
                    done = True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if not done:
                return
        conn = StreamConnection(host, lis, stream, client)
        host.connection_opened(conn)
        await conn.run()
    finally:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connection %s on %s closed (allocation: %s)", client, lis.name,
                      conn is not None and conn.alloc is not None)
        if conn is not None:
            conn.closed = True
            host.connection_closed(conn)
        try:
            await trio.aclose_forcefully(stream)
        finally:
            if stream is not tcp:
                release_tls(stream)


def release_tls(stream: trio.abc.Stream) -> None:
    """Break the reference cycle a closed `trio.SSLStream` keeps (its handshake guard holds
    a bound method of the stream), so reference counting frees the stream and OpenSSL's
    buffers (tens of KB a connection) at once instead of waiting for a full collection."""
    vars(stream).pop("_handshook", None)
