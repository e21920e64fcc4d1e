"""The TURN gateway: listener sockets, relay sockets and the forwarding loops.

TURN-UDP listeners are served here; TURN-TCP and TURN-TLS control connections by
`relay.net.stream` (the relayed transport is UDP for all of them).

Hot-path rules (DESIGN.md §4): one reader task per listener socket, and one for all relay
sockets (waiting on one epoll set of them), each draining with plain non-blocking
`recvfrom_into` into a preallocated buffer and forwarding with a plain `sendto`; a dict
lookup per packet; int counters; no logging per packet; a checkpoint every `BATCH`
datagrams so other tasks run.  A full send buffer drops the datagram and counts it.

Ownership: `serve_gateway` owns a nursery with the listener readers, the relay reader, the
sweeper, and an allocation nursery in which each allocation's task holds its relay sockets'
registration in the epoll set.  The sans-IO core (`TurnServer`) gets relay sockets through
`RelaySockets` (its `RelayPortAllocator`) and reports what happened as effects, which
`Gateway.perform` carries out: `AllocationCreated` binds the allocation's sender and starts
its task; `AllocationDeleted` (the core has released its relay sockets, out of the epoll set
first, so their ports are back in the pool) cancels that task and tells its stream
connection.  Cancelling the gateway deletes every allocation.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import attrs
import trio

from relay.config import Config, ListenerConfig
from relay.errors import ConfigError
from relay.fdlimit import FD_ERRNOS, GUARD, serve_accepts
from relay.net import mmsg, native
from relay.net.forward import forward_channel_data, forward_send_indication
from relay.net.mmsg import RecvBatch, SendBatch, SendResult
from relay.net.stream import StreamConnection, serve_connection, tls_context
from relay.stun.fastpath import data_indication, scan_send_indication
from relay.stun.framing import CHANNEL_DATA, STUN, demux_table
from relay.turn.allocation import Address, Allocation, Channel, Permission, RelayEndpoint
from relay.turn.auth import Authenticator
from relay.turn.effects import AllocationCreated, Effect
from relay.turn.policy import PeerPolicy
from relay.turn.quota import QuotaLedger
from relay.turn.server import FAMILY_V4, FAMILY_V6, ListenerState, TurnServer
from relay.turn.stats import TurnStats

log = logging.getLogger("relay.gateway")

BATCH = 64  # datagrams handled before yielding to the scheduler
RECV_SLOTS = 32  # datagrams per recvmmsg (turn.batch_io)
SEND_SLOTS = 32  # datagrams per sendmmsg (turn.batch_io)
BUFFER = 65536 + 64
SWEEP_INTERVAL = 1.0
DNS_INTERVAL = 30.0  # STRICT_DNS clusters are re-resolved this often
_AF = {FAMILY_V4: socket.AF_INET, FAMILY_V6: socket.AF_INET6}
_SEND_INDICATION = b"\x00\x16"
_STUN = STUN
_CHANNEL_DATA = CHANNEL_DATA
_pack_head = struct.Struct("!HH").pack_into


class UdpRelay:
    """A relayed transport address: a bound non-blocking UDP socket from the port pool."""

    __slots__ = ("family", "ip", "port", "sock")

    def __init__(self, family: int, ip: str, port: int, sock: socket.socket) -> None:
        self.family = family
        self.ip = ip
        self.port = port
        self.sock = sock


class RelayPorts:
    """The relay port range, shared by all listeners; one used-set per address family."""

    MAX_BIND_TRIES = 64

    def __init__(self, min_port: int, max_port: int, buffer: int) -> None:
        self.min_port = min_port
        self.max_port = max_port
        self.buffer = buffer
        self.used: dict[int, set[int]] = {FAMILY_V4: set(), FAMILY_V6: set()}

    def release(self, family: int, port: int) -> None:
        self.used[family].discard(port)

    def _bind(self, family: int, bind_ip: str, port: int) -> socket.socket | None:
        """A bound relay socket; None when the port is taken.  OSError (EMFILE) when no
        descriptor is left outside the reserve (`relay.fdlimit`): counted, and the Allocate
        gets its 508."""
        try:
            sock = socket.socket(_AF[family], socket.SOCK_DGRAM)
        except OSError as exc:
            if exc.errno in FD_ERRNOS:
                GUARD.refused("relay_socket", exc.strerror)
            raise
        if GUARD.in_reserve(sock.fileno()):
            sock.close()
            GUARD.refused("relay_socket", "headroom reached")
            raise OSError(errno.EMFILE, "file descriptors reserved")
        try:
            if family == FAMILY_V6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            _set_buffers(sock, self.buffer)
            sock.bind((bind_ip, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            if exc.errno in FD_ERRNOS:
                GUARD.refused("relay_socket", exc.strerror)
            raise
        return sock

    def open(self, family: int, mode: str, bind_ip: str, adv_ip: str,
             port_range: tuple[int, int] | None = None) -> tuple[UdpRelay, UdpRelay | None]:
        """Bind a relay socket; mode "any", "even" or "pair" (even port + the next one
        reserved), from `port_range` (a listener's own) or the shared range.  OSError when
        the range is exhausted."""
        used = self.used[family]
        lo, hi = port_range or (self.min_port, self.max_port)
        span = hi - lo + 1
        start = random.randrange(span)
        tries = 0
        for i in range(span):
            port = lo + (start + i) % span
            if port in used or (mode != "any" and port % 2):
                continue
            if mode == "pair" and (port + 1 > hi or port + 1 in used):
                continue
            tries += 1
            if tries > self.MAX_BIND_TRIES:
                break
            sock = self._bind(family, bind_ip, port)
            if sock is None:
                # Taken by another program: ports in use tend to come in blocks (another
                # server's range), so go on from a random place rather than the next port.
                start = random.randrange(span) - i - 1
                continue
            nxt: UdpRelay | None = None
            if mode == "pair":
                sock2 = self._bind(family, bind_ip, port + 1)
                if sock2 is None:
                    sock.close()
                    continue
                used.add(port + 1)
                nxt = UdpRelay(family, adv_ip, port + 1, sock2)
            used.add(port)
            return UdpRelay(family, adv_ip, port, sock), nxt
        raise OSError(errno.EADDRNOTAVAIL, "no free relay port")


def _set_buffers(sock: socket.socket, size: int) -> None:
    if size <= 0:
        return
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass


def _primary_address(family: int) -> str | None:
    """The source address the kernel would use towards the internet (no packet is sent)."""
    probe = "192.0.2.1" if family == FAMILY_V4 else "2001:db8::1"
    try:
        with socket.socket(_AF[family], socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            addr: str = s.getsockname()[0]
            return addr
    except OSError:
        return None


def _bindable(family: int, ip: str) -> bool:
    try:
        with socket.socket(_AF[family], socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


@attrs.frozen
class RelayAddress:
    """Where a listener's relay sockets of one family bind, and what they advertise in
    XOR-RELAYED-ADDRESS (they differ behind NAT or for a wildcard bind)."""

    bind: str
    advertised: str


def relay_addresses(lis: ListenerConfig, relay_v4: str, relay_v6: str
                    ) -> dict[int, RelayAddress]:
    """family -> bind and advertised address of a listener's relay sockets.

    Advertised: `turn.relay_address(_v6)` when set; else the listener's own address when it
    is specific; a loopback listener offers both loopback families; a wildcard listener
    advertises the host's primary address of its family."""
    out: dict[int, RelayAddress] = {}
    ip = ipaddress.ip_address(lis.address)
    for family, configured in ((FAMILY_V4, relay_v4), (FAMILY_V6, relay_v6)):
        adv: str | None = configured or None
        if adv is None:
            if ip.version == (4 if family == FAMILY_V4 else 6):
                adv = _primary_address(family) if ip.is_unspecified else lis.address
            elif ip.is_loopback:
                adv = "127.0.0.1" if family == FAMILY_V4 else "::1"
        if adv is None:
            continue
        bind = adv if _bindable(family, adv) else ("0.0.0.0" if family == FAMILY_V4 else "::")
        if not _bindable(family, bind):
            continue
        out[family] = RelayAddress(bind, adv)
    return out


class RelayWatch(NamedTuple):
    """What the relay reader needs of one relay socket, fetched with one dict lookup per
    readable socket and unpacked at once (a tuple: no attribute lookups per datagram)."""

    recv: Callable[..., Any]  # the relay socket's recvfrom_into
    send: Callable[[Any, Address], int]  # towards the client (listener sendto / stream)
    client: Address
    permissions: dict[str, Permission]  # peer IP -> permission (the allocation's own dict)
    channels: dict[tuple[str, int], Channel]  # peer address -> bound channel
    traffic: Any  # the listener's Traffic counters
    v6: bool  # the relay socket is IPv6
    alloc: Allocation


class RelaySockets:
    """The core's `RelayPortAllocator`: relay sockets from the port range, bound on the
    listener's relay address of the family, and released out of the relay reader's epoll
    set before they close (the fd number may be reused at once)."""

    __slots__ = ("addresses", "epoll", "fds", "pool", "ranges")

    def __init__(self, pool: RelayPorts, epoll: select.epoll,
                 fds: dict[int, RelayWatch]) -> None:
        self.pool = pool
        self.epoll = epoll
        self.fds = fds  # the relay reader's registrations: fd -> its entry
        self.addresses: dict[str, dict[int, RelayAddress]] = {}  # listener -> family -> ...
        self.ranges: dict[str, tuple[int, int]] = {}  # listener -> its relay port range

    def open(self, listener: str, family: int, mode: str
             ) -> tuple[RelayEndpoint, RelayEndpoint | None]:
        where = self.addresses[listener][family]
        return self.pool.open(family, mode, where.bind, where.advertised,
                              self.ranges.get(listener))

    def release(self, endpoint: RelayEndpoint) -> None:
        assert isinstance(endpoint, UdpRelay)
        sock = endpoint.sock
        fd = sock.fileno()
        if fd < 0:
            return
        if self.fds.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        sock.close()
        self.pool.release(endpoint.family, endpoint.port)


@attrs.define(slots=True)
class AllocationIO:
    """The gateway's side of an allocation (`Allocation.io`): how to reach its client (the
    UDP listener socket's sendto, or the stream connection's send_frame, which pads
    ChannelData to 4 bytes) and the cancel scope of its task once that runs."""

    send: Callable[[Any, Address], int]
    scope: trio.CancelScope | None = None


def _io(alloc: Allocation) -> AllocationIO:
    """The gateway's side of an allocation it created (set before its task starts)."""
    io = alloc.io
    assert isinstance(io, AllocationIO)
    return io


@attrs.frozen
class WorkerShare:
    """What the gateway of a worker process shares with the other workers: its listener
    sockets (name -> socket bound by the supervisor), the quota ledger, the nonce key.

    `sockets` holds the sockets handed and not served yet: those of every listener at
    start, those a reload hands (the worker fills it before `Gateway.reconfigure`, which
    takes what new or re-bound listeners need)."""

    sockets: dict[str, socket.socket]
    ledger: QuotaLedger
    nonce_key: bytes
    workers: int = 1  # how many share the server (the 401/438 guard is split between them)


class Gateway:
    """The sockets and loops around one `TurnServer`; it performs the core's effects and is
    the `StreamHost` of the stream connections."""

    def __init__(self, config: Config, stats: TurnStats,
                 own_addresses: Iterable[tuple[str, int]] = (), *,
                 shared: WorkerShare | None = None) -> None:
        """`own_addresses`: where the rest of relay listens (admin, signaling), refused as
        peers like the listeners themselves.  `shared`: what a worker process gets from its
        supervisor (listener sockets, the quota ledger, the nonce key)."""
        self.config = config
        cfg = config
        self.stats = stats
        self.own_addresses = set(own_addresses)  # plus each listener, once bound
        self.bound_ports: dict[str, int] = {}  # listener name -> port as really bound
        self.ports = RelayPorts(cfg.turn.min_port, cfg.turn.max_port, cfg.turn.udp_receive_buffer)
        self.policy = PeerPolicy.from_config(cfg)
        self.epoll = select.epoll()
        self.relay_fds: dict[int, RelayWatch] = {}
        self.relay_sockets = RelaySockets(self.ports, self.epoll, self.relay_fds)
        self.shared = shared
        self.server = TurnServer(
            cfg, stats, self.policy, self.relay_sockets,
            authenticator=None if shared is None else Authenticator(
                cfg.auth, nonce_lifetime=cfg.turn.nonce_lifetime, nonce_key=shared.nonce_key),
            ledger=None if shared is None else shared.ledger,
            share=1 if shared is None else shared.workers)
        self.sockets: dict[str, socket.socket] = {}  # TURN-UDP listeners
        # TURN-TCP / TURN-TLS listeners: name -> (listening socket, TLS context or None)
        self.stream_sockets: dict[str, tuple[trio.socket.SocketType, ssl.SSLContext | None]] = {}
        self.streams: dict[tuple[str, Address], StreamConnection] = {}  # (listener, client)
        self.alloc_nursery: trio.Nursery | None = None
        self.nursery: trio.Nursery | None = None  # where listener tasks run (set by serve)
        self.listener_scopes: dict[str, trio.CancelScope] = {}
        # every listener served, the draining ones (removed by a reload) included
        self.listener_configs: dict[str, ListenerConfig] = {}
        self.relay_buf = bytearray(BUFFER)
        self.relay_view = memoryview(self.relay_buf)
        # recvmmsg/sendmmsg in the datagram loops where the platform has them
        self.batch_io = cfg.turn.batch_io and mmsg.AVAILABLE
        self.send_batches: dict[str, _Out] = {}  # TURN-UDP listener -> its outgoing batch
        # the compiled datagram plane (`turn.data_plane`), serving self.epoll
        self.native = _native_plane(cfg, self.epoll)
        if self.native is not None:
            self.batch_io = False  # the compiled loop does its own reads and sends
        self.client_handlers: dict[int, Callable[[memoryview, int, Any], None]] = {}
        self.native_driven = False  # the plane runs in a Trio instrument (else it polls)
        self.handler_listeners: dict[Any, ListenerState] = {}  # client handler -> listener
        for c in cfg.clusters:
            self.stats.cluster(c.name)

    # -- the core's effects -----------------------------------------------------------------

    def perform(self, effects: Iterable[Effect | None]) -> None:
        """Carry out what the core reported, in order: an allocation's life, I/O side."""
        for eff in effects:
            if eff is None:
                continue
            if isinstance(eff, AllocationCreated):
                self._created(eff.allocation)
            else:
                self._deleted(eff.allocation)

    def answer(self, lis: ListenerState, client: Address, data: bytes) -> bytes | None:
        """The core's reply to one STUN message from `client`, its effects performed."""
        out = self.server.handle(lis, client, data, trio.current_time(), time.time())
        if out.effects:
            self.perform(out.effects)
        if self.native is not None:
            alloc = lis.allocations.get(client)
            if alloc is not None:
                self._sync_native(alloc)
        return out.reply

    def _sync_native(self, alloc: Allocation) -> None:
        """Routes of a TURN-UDP client's allocation into the compiled plane's table."""
        sock = self.sockets.get(alloc.listener)
        if self.native is not None and sock is not None:
            check = self.policy.check
            name = alloc.listener
            self.native.sync(alloc, sock.fileno(),
                             lambda ip, port: check(name, ip, port).allowed)

    def _created(self, alloc: Allocation) -> None:
        assert self.alloc_nursery is not None
        sock = self.sockets.get(alloc.listener)
        if sock is not None:
            alloc.io = AllocationIO(sock.sendto)
        else:
            conn = self.streams[(alloc.listener, alloc.client)]
            conn.allocation_created(alloc)
            alloc.io = AllocationIO(conn.send_frame)
        self.alloc_nursery.start_soon(self._run_allocation, alloc)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("allocation %s for %s on %s: relays %s", alloc.user_id, alloc.client,
                      alloc.listener, [(ep.ip, ep.port) for ep in alloc.relays.values()])

    def _deleted(self, alloc: Allocation) -> None:
        # The core has released the relay sockets (forgotten by the reader first).
        if self.native is not None:
            self.native.drop(alloc)
        io = alloc.io
        scope = io.scope if isinstance(io, AllocationIO) else None
        if scope is not None:
            scope.cancel()
        if alloc.listener in self.stream_sockets:
            conn = self.streams.get((alloc.listener, alloc.client))
            if conn is not None and conn.alloc is alloc:
                conn.allocation_deleted()  # the connection stays open (RFC 8656)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("allocation %s for %s on %s ended", alloc.user_id, alloc.client,
                      alloc.listener)

    # -- setup ----------------------------------------------------------------------------

    def bind_listeners(self) -> None:
        for i, lis in enumerate(self.config.listeners):
            self._install(lis, self._open_listener(lis, f"listeners[{i}]"))
        self.policy.set_own_addresses(self.own_addresses)

    def _open_listener(self, lis: ListenerConfig, key: str) -> _Opened:
        """Bind one listener's socket (and load its TLS certificate); nothing is installed
        yet, so a reload can bind all its new listeners before it changes anything. `key`
        names the listener in the config, for errors."""
        fam = FAMILY_V6 if ":" in lis.address else FAMILY_V4
        given = None
        if self.shared is not None:  # a worker serves what the supervisor bound, never binds
            given = self.shared.sockets.pop(lis.name, None)
            if given is None:
                raise OSError(errno.EBADF, f"{key}.port (listener {lis.name}): no socket "
                              "from the supervisor")
        if lis.protocol != "TURN-UDP":
            return self._bind_stream(lis, fam, key, given)
        if given is not None:  # bound by the supervisor, shared by port with the workers
            given.setblocking(False)
            return _Opened(given, None, int(given.getsockname()[1]))
        sock = socket.socket(_AF[fam], socket.SOCK_DGRAM)
        try:
            if fam == FAMILY_V6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            _set_buffers(sock, self.config.turn.udp_receive_buffer)
            sock.bind((lis.address, lis.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"{key}.port (listener {lis.name}): cannot bind "
                f"{lis.address}:{lis.port}/udp: {exc.strerror}"
            ) from None
        return _Opened(sock, None, int(sock.getsockname()[1]))

    def _install(self, lis: ListenerConfig, opened: _Opened) -> None:
        """Serve a bound listener (its task starts now when the gateway is running)."""
        if lis.protocol == "TURN-UDP":
            assert isinstance(opened.sock, socket.socket)
            self.sockets[lis.name] = opened.sock
            transport = "udp"
        else:
            self.stream_sockets[lis.name] = (
                trio.socket.from_stdlib_socket(opened.sock), opened.ctx)
            transport = "tls" if lis.protocol == "TURN-TLS" else "tcp"
        self.listener_configs[lis.name] = lis
        self._add_listener(lis, opened.port, transport)
        if self.batch_io and transport == "udp":
            self.send_batches[lis.name] = _Out(
                opened.sock, self.server.listeners[lis.name].stats.traffic)
        if self.nursery is not None:
            self.nursery.start_soon(self._serve_listener, lis.name)

    def _bind_stream(self, lis: ListenerConfig, fam: int, key: str,
                     given: socket.socket | None = None) -> _Opened:
        """A listening TCP socket for a TURN-TCP or TURN-TLS listener (or the one `given`,
        listening already in the supervisor)."""
        ctx = tls_context(lis.cert, lis.key) if lis.protocol == "TURN-TLS" else None
        if given is not None:
            given.setblocking(False)
            return _Opened(given, ctx, int(given.getsockname()[1]))
        sock = socket.socket(_AF[fam], socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == FAMILY_V6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((lis.address, lis.port))
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"{key}.port (listener {lis.name}): cannot bind "
                f"{lis.address}:{lis.port}/tcp: {exc.strerror}"
            ) from None
        return _Opened(sock, ctx, int(sock.getsockname()[1]))

    def _add_listener(self, lis: ListenerConfig, port: int, transport: str) -> None:
        cfg = self.config
        self.own_addresses.add((lis.address, port))
        relays = relay_addresses(lis, cfg.turn.relay_address, cfg.turn.relay_address_v6)
        if not relays:
            log.warning("listener %s: no relay address; set turn.relay_address", lis.name)
        self.relay_sockets.addresses[lis.name] = relays
        self.relay_sockets.ranges[lis.name] = lis.relay_port_range(cfg.turn)
        self.server.add_listener(lis.name, frozenset(relays), transport)
        self.bound_ports[lis.name] = port

    def _close_listener(self, name: str) -> int:
        """Stop serving a listener now: its allocations end, its socket closes.  The number
        of allocations that ended."""
        effects = self.server.remove_listener(name, trio.current_time())
        self.perform(effects)
        scope = self.listener_scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        # the relay reader flushes every batch before it yields: nothing is pending here
        self.send_batches.pop(name, None)
        sock = self.sockets.pop(name, None)
        if sock is not None:
            self._unwatch_listener(sock)  # before it closes: the fd number may be reused
            sock.close()
        stream = self.stream_sockets.pop(name, None)
        if stream is not None:  # open connections stay, refused new allocations
            stream[0].close()
        lis = self.listener_configs.pop(name, None)
        port = self.bound_ports.pop(name, None)
        if lis is not None and port is not None:
            self.own_addresses.discard((lis.address, port))
        self.relay_sockets.addresses.pop(name, None)
        self.relay_sockets.ranges.pop(name, None)
        return len(effects)

    # -- reload and drain ------------------------------------------------------------------

    def reconfigure(self, config: Config) -> list[str]:
        """Apply a reloaded config; what changed, one line each, for the log.

        Listeners are matched by name.  An unchanged listener keeps its socket, its task and
        its allocations; a TURN-TLS listener re-reads its certificate (open connections keep
        theirs).  A listener whose routes or public address changed is updated in place.  A
        listener whose protocol, address or port changed is bound anew and the old one
        closed (its allocations end).  A removed listener drains: no new allocations, the
        existing ones run until they end, then its socket closes.  Credentials, quotas,
        lifetimes, clusters and the relay port range apply to the next request.

        Everything that can fail (binding new sockets, loading certificates) happens before
        anything changes: on an OSError or ConfigError the old config stays in force."""
        old = self.listener_configs
        new = {lis.name: lis for lis in config.listeners}
        rebind = [lis for name, lis in new.items()
                  if name not in old or not same_binding(old[name], self.bound_ports[name], lis)]
        contexts: dict[str, ssl.SSLContext | None] = {}
        for lis in new.values():
            if lis.protocol == "TURN-TLS" and lis not in rebind:
                contexts[lis.name] = tls_context(lis.cert, lis.key)  # re-read, may raise
        opened: dict[str, _Opened] = {}
        try:
            for lis in rebind:
                opened[lis.name] = self._open_listener(
                    lis, f"listeners[{config.listeners.index(lis)}]")
        except BaseException:
            for o in opened.values():
                o.sock.close()
            raise
        # Nothing can fail from here on.
        changes: list[str] = []
        self.config = config
        cfg = config.turn
        self.ports.min_port, self.ports.max_port = cfg.min_port, cfg.max_port
        self.server.apply(config)
        for lis in rebind:
            if lis.name in old:
                ended = self._close_listener(lis.name)
                changes.append(f"listener {lis.name}: re-bound, {ended} allocation(s) ended")
            self._install(lis, opened[lis.name])
            changes.append(f"listener {lis.name}: {lis.protocol} on "
                           f"{lis.address}:{self.bound_ports[lis.name]}")
        for name, lis in new.items():
            if name in opened:
                continue
            if self.server.listeners[name].draining:  # removed, and back before it drained
                self.server.listeners[name].draining = False
                changes.append(f"listener {name}: back, no longer draining")
            if name in contexts:
                sock, _ctx = self.stream_sockets[name]
                self.stream_sockets[name] = (sock, contexts[name])
                changes.append(f"listener {name}: TLS certificate re-read")
            if lis != old[name]:
                self.listener_configs[name] = lis
                changes.append(f"listener {name}: updated")
            self.relay_sockets.addresses[name] = relay_addresses(
                lis, cfg.relay_address, cfg.relay_address_v6) or self.relay_sockets.addresses[name]
            self.relay_sockets.ranges[name] = lis.relay_port_range(cfg)
        for name in list(old):
            if name in new or self.server.listeners[name].draining:
                continue
            lis_state = self.server.listeners[name]
            lis_state.draining = True
            changes.append(f"listener {name}: removed, draining "
                           f"{len(lis_state.allocations)} allocation(s)")
        self.policy.reconfigure(self.listener_configs.values(), config.clusters)
        self.policy.set_own_addresses(self.own_addresses)
        for c in config.clusters:
            self.stats.cluster(c.name)
        self._close_drained()
        if self.native is not None:  # clusters and policy may have changed every route
            for lis_state in self.server.listeners.values():
                for alloc in list(lis_state.allocations.values()):
                    self._sync_native(alloc)
        return changes

    def _close_drained(self) -> None:
        """Close the removed listeners whose last allocation has ended."""
        for name, lis in list(self.server.listeners.items()):
            if lis.draining and not lis.allocations:
                self._close_listener(name)
                log.info("listener %s: drained, closed", name)

    def drain(self) -> None:
        """Refuse every new Allocate (508); the existing allocations go on."""
        self.server.draining = True

    @property
    def allocations(self) -> int:
        return sum(len(lis.allocations) for lis in self.server.listeners.values())

    async def _serve_listener(self, name: str) -> None:
        """A listener's task, in a cancel scope `_close_listener` cancels."""
        with trio.CancelScope() as scope:
            self.listener_scopes[name] = scope
            if name in self.sockets and self.native is not None:
                await self._native_listener(self.server.listeners[name], self.sockets[name])
            elif name in self.sockets:
                await self.listener_loop(self.server.listeners[name], self.sockets[name])
            elif name in self.stream_sockets:
                await self.stream_listener_loop(name)

    async def stream_listener_loop(self, name: str) -> None:
        """Accept TURN-TCP / TURN-TLS connections, each served in its own task."""
        sock, _ctx = self.stream_sockets[name]
        lis = self.server.listeners[name]

        async def handler(stream: trio.SocketStream) -> None:
            # The TLS context as of this accept: a reload may have re-read the certificate.
            entry = self.stream_sockets.get(name)
            if entry is None:
                await stream.aclose()
                return
            await serve_connection(self, lis, entry[1], stream)

        await serve_accepts([sock], handler, where="turn_accept",
                            per_ip=self.config.turn.max_connections_per_ip)

    # -- StreamHost: what the stream connections call -------------------------------------

    def connection_opened(self, conn: StreamConnection) -> None:
        self.streams[(conn.lis.name, conn.client)] = conn

    def connection_closed(self, conn: StreamConnection) -> None:
        key = (conn.lis.name, conn.client)
        if self.streams.get(key) is conn:
            del self.streams[key]
        alloc = conn.alloc
        if alloc is not None and alloc.alive:
            self.perform([self.server.delete(alloc, trio.current_time())])

    def close(self) -> None:
        self.perform(self.server.close_all(trio.current_time()))
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        for ssock, _ctx in self.stream_sockets.values():
            ssock.close()
        self.stream_sockets.clear()
        self.epoll.close()

    # -- loops ----------------------------------------------------------------------------

    async def resolve_clusters(self, interval: float = DNS_INTERVAL) -> None:
        """Keep STRICT_DNS clusters' addresses current: such a cluster admits exactly the
        addresses its hostnames resolve to (a failed lookup keeps the last good answer)."""
        while True:
            clusters = [c for c in self.config.clusters if c.type == "STRICT_DNS"]
            for cluster in clusters:
                ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
                failed = False
                for host in cluster.hostnames:
                    try:
                        infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
                    except OSError as exc:
                        failed = True
                        log.warning("cluster %s: cannot resolve %s: %s", cluster.name, host, exc)
                        continue
                    for info in infos:
                        ips.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
                if ips or not failed:
                    self.policy.set_resolved(cluster.name, ips)
            await trio.sleep(interval)

    async def sweeper(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            self.perform(self.server.sweep(trio.current_time()))
            self._close_drained()

    def client_handler(self, lis: ListenerState, sock: socket.socket
                       ) -> Callable[[memoryview, int, Any], None]:
        """What is done with one datagram `view[:n]` from `addr` on a TURN-UDP listener:
        ChannelData and Send indications forwarded, requests answered (the reply sent),
        anything else dropped and counted.  Shared by the plain loop (every datagram) and
        the compiled plane (the datagrams it hands back)."""
        send = sock.sendto
        allocs = lis.allocations
        traffic = lis.stats.traffic
        drops = self.stats.drops
        policy = self.policy
        answer = self.answer
        demux = demux_table(self.server.channel_max)
        latency = self.stats.request_latency
        perf = time.perf_counter

        def handle(dview: memoryview, n: int, addr: Any) -> None:
            traffic.rx_packets += 1
            traffic.rx_bytes += n
            first = dview[0]
            kind = demux[first]  # the codec's rule: STUN, ChannelData or neither
            if kind == _CHANNEL_DATA:
                alloc = allocs.get(addr)
                if alloc is None or n < 4:
                    drops["no_allocation" if alloc is None else "malformed"] += 1
                else:
                    forward_channel_data(alloc, dview, n, drops)
            elif kind == _STUN and n >= 20:
                if first == 0 and dview[1] == 0x16:  # a Send indication
                    alloc = allocs.get(addr)
                    if alloc is None:
                        drops["no_allocation"] += 1
                    else:
                        forward_send_indication(alloc, dview, n, policy, drops)
                else:
                    # the core bounds the size (MAX_UDP_REQUEST, counted too_large)
                    t0 = perf()
                    reply = answer(lis, addr, dview[:n].tobytes())
                    if reply is not None:
                        try:
                            send(reply, addr)
                            traffic.tx_packets += 1
                            traffic.tx_bytes += len(reply)
                        except BlockingIOError:
                            drops["send_buffer_full"] += 1
                        except OSError:
                            pass
                    latency.observe(perf() - t0)
            else:
                drops["malformed"] += 1

        return handle

    async def listener_loop(self, lis: ListenerState, sock: socket.socket) -> None:
        """Client -> relay on the plain path: every datagram to `client_handler`'s body.

        Only the receive differs: one `recvfrom_into` per datagram, or (`turn.batch_io`) a
        `recvmmsg` of up to `RECV_SLOTS` into a batch's slots.  A short batch (or EAGAIN)
        ends the drain: wait for readability again."""
        batch = RecvBatch(RECV_SLOTS, BUFFER) if self.batch_io else None
        recv_many = batch.recv if batch is not None else None
        slots = RECV_SLOTS if batch is not None else 1
        buf = bytearray(BUFFER) if batch is None else bytearray(0)
        view = memoryview(buf)
        recv = sock.recvfrom_into
        fileno = sock.fileno
        handle = self.client_handler(lis, sock)
        wait = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        got: Any
        while True:
            await wait(sock)
            handled = 0
            while True:
                try:
                    if recv_many is None:
                        n, addr = recv(buf)
                        got = ((view, n, addr),)
                    else:
                        got = recv_many(fileno())  # a closed socket's -1 is EBADF
                        if not got:
                            break
                except BlockingIOError:
                    break
                except OSError:
                    if fileno() < 0:
                        return
                    continue  # an error report for an earlier send; nothing to read
                for dview, n, addr in got:
                    handle(dview, n, addr)
                if len(got) < slots:
                    break  # drained for now: wait_readable again rather than ask for EAGAIN
                handled += len(got)
                if handled >= BATCH:
                    handled = 0
                    await checkpoint()

    async def _native_listener(self, lis: ListenerState, sock: socket.socket) -> None:
        """A TURN-UDP listener served by the compiled plane: its socket is in the epoll set
        while this task runs (the plane's task reads it)."""
        plane = self.native
        assert plane is not None
        fd = sock.fileno()
        handler = self.client_handlers[fd] = self.client_handler(lis, sock)
        self.handler_listeners[handler] = lis
        plane.add_listener(fd, lis.stats.traffic)
        self.epoll.register(fd, select.EPOLLIN)
        try:
            await trio.sleep_forever()
        finally:
            self._unwatch_listener(sock)

    def _unwatch_listener(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        handler = self.client_handlers.pop(fd, None) if fd >= 0 else None
        if self.native is None or handler is None:
            return
        self.handler_listeners.pop(handler, None)
        self.native.remove_listener(fd, self.stats.drops)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def peer_datagram(self, entry: RelayWatch, slot: memoryview, n: int, addr: Any) -> None:
        """One datagram `slot[4:4+n]` from `addr` on the relay socket of `entry`, sent to the
        client as ChannelData (the header written into `slot[:4]`) or as a Data indication,
        or dropped and counted.  The relay reader's body for one datagram sent at once;
        also the compiled plane's for the datagrams it hands back."""
        _recv, send, client, perms, chans, ltraffic, v6, alloc = entry
        drops = self.stats.drops
        ip = addr[0]
        perm = perms.get(ip)
        if perm is None:
            drops["no_permission"] += 1
            return
        if v6:
            addr = addr[:2]
        if not perm.any_port and not self.policy.check(alloc.listener, ip, addr[1]).allowed:
            drops["peer_not_allowed"] += 1
            return
        ct = perm.cluster.traffic
        ct.rx_packets += 1
        ct.rx_bytes += n
        chan = chans.get(addr)
        try:
            if chan is not None:
                _pack_head(slot, 0, chan.number, n)
                sent = send(slot[: 4 + n], client)
            else:
                sent = send(data_indication(alloc.indication_id(), ip, addr[1], slot[4 : 4 + n]),
                            client)
            ltraffic.tx_packets += 1
            ltraffic.tx_bytes += sent
        except BlockingIOError:
            drops["send_buffer_full"] += 1
        except (OSError, ValueError):
            drops["too_large"] += 1

    async def native_reader(self) -> None:
        """The compiled plane's task: the plane forwards what has routes and hands the rest
        back, decided here as on the plain path (`client_handler`, `peer_datagram`).

        With Trio's epoll descriptor at hand (`native.trio_epoll_fd`) the plane runs in a
        Trio instrument where Trio would sleep (`native.Driver`), which this task installs
        and removes.  Without it the task runs the plane itself: it polls without blocking
        and waits on the set with `wait_readable`, as the relay reader."""
        plane = self.native
        assert plane is not None
        drops = self.stats.drops
        nest = native.trio_epoll_fd()
        if nest is not None:
            try:
                self.epoll.register(nest, select.EPOLLIN)
            except OSError:
                native.release_driving()
                nest = None
        if nest is None:
            await self._native_polling(plane)
            return
        driver = native.Driver(plane, nest, BATCH, drops, self._punted)
        trio.lowlevel.add_instrument(driver)
        self.native_driven = True
        try:
            await trio.sleep_forever()
        finally:
            trio.lowlevel.remove_instrument(driver)
            native.release_driving()
            self.native_driven = False
            plane.fold(drops)
            try:
                self.epoll.unregister(nest)
            except (OSError, ValueError):
                pass

    def _punted(self, kind: int, fd: int, n: int, data: memoryview, addr: Any) -> None:
        """A datagram the compiled plane handed back, decided as on the plain path."""
        if kind == native.PUNT_CLIENT:
            handler = self.client_handlers.get(fd)
            if handler is not None:
                handler(data, n, addr)
                if n >= 20 and data[0] == 0 and data[1] == 0x16 and self.native is not None:
                    self._learn_send(handler, data, n, addr)
        else:
            entry = self.relay_fds.get(fd)
            if entry is not None:
                self.peer_datagram(entry, data, n, addr)
                alloc = entry.alloc
                if self.native is not None and alloc.listener in self.sockets:
                    check = self.policy.check
                    self.native.learn(alloc, fd, addr,
                                      lambda ip, port: check(alloc.listener, ip, port).allowed)

    def _learn_send(self, handler: Any, data: memoryview, n: int, addr: Any) -> None:
        """A Send indication Python forwarded: the compiled plane may send the next ones to
        that exact peer address itself (the policy answered for it)."""
        found = scan_send_indication(data, n)
        lis = self.handler_listeners.get(handler)
        if found is None or lis is None or self.native is None:
            return
        alloc = lis.allocations.get(addr)
        if alloc is not None:
            check = self.policy.check
            self.native.learn_send(alloc, (found[0], found[1]),
                                   lambda ip, port: check(alloc.listener, ip, port).allowed)

    async def _native_polling(self, plane: native.NativePlane) -> None:
        drops = self.stats.drops
        now = trio.current_time
        punts = 0
        try:
            while True:
                code = plane.pump(-1, 0, BATCH, now())
                if code == native.PUNT:
                    for punt in plane.take_punts():
                        self._punted(*punt)
                    punts += 1
                    if punts < BATCH:
                        continue
                punts = 0
                plane.fold(drops)
                if code == native.IDLE:
                    await trio.lowlevel.wait_readable(self.epoll)
                else:
                    await trio.lowlevel.checkpoint()
        finally:
            plane.fold(drops)

    async def _run_allocation(self, alloc: Allocation) -> None:
        """The allocation's task: its relay sockets are served while it runs.

        Deleting the allocation cancels it; cancelling it (gateway shutdown) deletes the
        allocation.  The sockets themselves are read by `relay_reader`, which waits on one
        epoll set for all of them (a task per socket would re-arm Trio's epoll on every
        wake-up)."""
        with trio.CancelScope() as scope:
            _io(alloc).scope = scope
            try:
                for ep in list(alloc.relays.values()):
                    if alloc.alive and isinstance(ep, UdpRelay) and ep.sock.fileno() >= 0:
                        self._watch(alloc, ep)
                if alloc.alive:
                    await trio.sleep_forever()
            finally:
                if alloc.alive:  # cancelled from outside: the allocation goes with its task
                    self.perform([self.server.delete(alloc, trio.current_time())])

    def _watch(self, alloc: Allocation, ep: UdpRelay) -> None:
        fd = ep.sock.fileno()
        lis = self.server.listeners[alloc.listener]
        self.relay_fds[fd] = RelayWatch(
            ep.sock.recvfrom_into, _io(alloc).send, alloc.client, alloc.permissions,
            alloc.peer_channels, lis.stats.traffic, ep.family == FAMILY_V6, alloc,
        )
        self.epoll.register(fd, select.EPOLLIN)

    async def relay_reader(self) -> None:
        """Peer -> relay -> client for every relay socket: ChannelData when a channel is
        bound, else a Data indication.

        One by one, `peer_datagram` decides and sends each datagram; with `turn.batch_io`
        (clients of a TURN-UDP listener) the datagram is received straight
        into a slot of that listener's `SendBatch` after room for the ChannelData header,
        and the batch goes out with one `sendmmsg` when full and before the reader yields.
        Allocations of TURN-TCP/TLS listeners are always sent one by one."""
        epoll = self.epoll
        poll = epoll.poll
        fds = self.relay_fds
        outs = self.send_batches  # TURN-UDP listener -> its batch (batch_io only)
        result = SendResult()
        # One receive buffer for every relay socket (64 KiB per allocation otherwise).
        view = self.relay_view
        body = view[4:]
        drops = self.stats.drops
        policy = self.policy
        peer = self.peer_datagram
        wait = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        while True:
            events = poll(0)
            if not events:
                await wait(epoll)
                continue
            for fd, _mask in events:
                entry = fds.get(fd)
                if entry is None:
                    continue
                out = outs.get(entry.alloc.listener)
                if out is None:  # one by one
                    for _ in range(BATCH):
                        try:
                            n, addr = entry.recv(body)
                        except OSError:  # BlockingIOError: drained; others: nothing to read
                            break
                        peer(entry, view, n, addr)
                    continue
                _recv, _send, client, perms, chans, _traffic, v6, alloc = entry
                name = alloc.listener
                batch = out.batch
                for _ in range(BATCH):
                    if batch.full:
                        _flush(out, result, drops)
                    slot = batch.slot()
                    into = slot[4:]
                    try:
                        n, addr = _recv(into)
                    except OSError:
                        break
                    ip = addr[0]
                    perm = perms.get(ip)
                    if perm is None:
                        drops["no_permission"] += 1
                        continue
                    if v6:
                        addr = addr[:2]
                    if not perm.any_port and not policy.check(name, ip, addr[1]).allowed:
                        drops["peer_not_allowed"] += 1
                        continue
                    ct = perm.cluster.traffic
                    ct.rx_packets += 1
                    ct.rx_bytes += n
                    chan = chans.get(addr)
                    if chan is not None:
                        _pack_head(slot, 0, chan.number, n)
                        batch.push(4 + n, client)  # counted when the batch is flushed
                    else:
                        batch.push_bytes(
                            data_indication(alloc.indication_id(), ip, addr[1], into[:n]), client)
            for out in outs.values():
                if out.batch.pending:
                    _flush(out, result, drops)
            await checkpoint()


class _Out:
    """One TURN-UDP listener's outgoing batch (`turn.batch_io`)."""

    __slots__ = ("batch", "sock", "traffic")

    def __init__(self, sock: socket.socket, traffic: Any) -> None:
        self.batch = SendBatch(SEND_SLOTS, BUFFER)
        self.sock = sock
        self.traffic = traffic


def _flush(out: _Out, result: SendResult, drops: dict[str, int]) -> None:
    out.batch.flush(out.sock, result)
    out.traffic.tx_packets += result.sent
    out.traffic.tx_bytes += result.sent_bytes
    if result.dropped_full:
        drops["send_buffer_full"] += result.dropped_full
    if result.dropped_refused:
        drops["too_large"] += result.dropped_refused
    result.sent = result.sent_bytes = result.dropped_full = result.dropped_refused = 0


async def serve_gateway(
    config: Config,
    stats: TurnStats,
    own_addresses: Iterable[tuple[str, int]] = (),
    *,
    shared: WorkerShare | None = None,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind every listener (TURN-UDP, TURN-TCP, TURN-TLS), then serve until cancelled;
    releases all on the way out.  `task_status.started(gateway)`: `gateway.bound_ports`
    holds each listener's bound port."""
    gw = Gateway(config, stats, own_addresses, shared=shared)
    try:
        gw.bind_listeners()
        log.info("TURN-UDP data plane: %s", "compiled (numba)" if gw.native is not None
                 else "Python" + (", batched I/O" if gw.batch_io else ""))
        async with trio.open_nursery() as nursery:
            gw.alloc_nursery = await nursery.start(_alloc_nursery)
            gw.nursery = nursery
            for name in gw.listener_configs:
                nursery.start_soon(gw._serve_listener, name)
            nursery.start_soon(gw.sweeper)
            nursery.start_soon(gw.relay_reader if gw.native is None else gw.native_reader)
            nursery.start_soon(gw.resolve_clusters)
            task_status.started(gw)
    finally:
        gw.close()


def _native_plane(cfg: Config, epoll: select.epoll) -> native.NativePlane | None:
    """The compiled plane `turn.data_plane` asks for (None: the plain path)."""
    choice = cfg.turn.data_plane
    if choice == "python":
        return None
    why = native.MISSING
    if native.AVAILABLE:
        try:
            return native.NativePlane(epoll.fileno(), BUFFER)
        except ImportError as exc:  # installed but broken
            why = str(exc)
    if choice == "native":
        raise ConfigError("turn.data_plane", f"native needs numba, which cannot be imported: {why}")
    log.warning("turn.data_plane: numba cannot be imported (%s); forwarding in Python", why)
    return None


@attrs.frozen
class _Opened:
    """A listener socket bound but not yet served (stdlib socket; TLS context if any)."""

    sock: socket.socket
    ctx: ssl.SSLContext | None
    port: int


def same_binding(old: ListenerConfig, bound_port: int, new: ListenerConfig) -> bool:
    """Whether `new` asks for the socket `old` has (port 0 took `bound_port`; writing that
    port into the file, or 0 again, keeps it); else the listener needs a new socket."""
    return ((old.protocol, old.address) == (new.protocol, new.address)
            and new.port in (old.port, bound_port))


async def _alloc_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()
