"""The compiled datagram plane (`turn.data_plane: native`): TURN-UDP forwarding in machine code.

Python pays ~3-4 µs of interpreter work per datagram on top of the syscalls (measured in
benchmarks/README.md), which made relay spend about twice coturn's CPU per relayed packet.
Here the per-datagram work -- receive, look the route up, add or strip the 4-byte
ChannelData header, send, count -- is a function compiled once by numba (LLVM, from PyPI
wheels: nothing is compiled at install) that calls libc's `epoll_wait`, `recvfrom` and
`sendto` directly and runs without the GIL.

What it forwards by itself, on the gateway's epoll set (TURN-UDP listener sockets and every
relay socket):
- client -> peer: a ChannelData message from a client with an allocation on a TURN-UDP
  listener, for a bound channel whose permission is installed;
- peer -> client: a datagram from a peer with a bound channel and permission, to a client
  on a TURN-UDP listener, as ChannelData.
Everything else -- STUN requests, Send and Data indications, unknown clients and channels,
expired or policy-checked routes, TCP/TLS clients -- is handed back ("punted") to the
gateway's Python code, which decides it exactly as on the plain path.

The routes are a forwarding table the gateway derives from the core's state
(`NativePlane.sync` after every request of an allocation's client, `drop` when it ends,
`resync` after a reload): two hash tables (numba typed dicts) from (socket, address[,
channel]) to a route row in numpy arrays.  A row carries its expiry (the earlier of the
permission's and the channel's), so a lapsed permission stops forwarding when it lapses,
without waiting for the sweeper.  Counters are numpy rows per listener and per cluster,
added into the `TurnStats` objects (`fold`) whenever the compiled loop returns to Python.

The loop blocks in `epoll_wait` on the gateway's set, to which Trio's own epoll descriptor is
added (`trio_epoll_fd`): when anything else in the process has work (a signaling message, a
scrape, a timer due), the loop returns and the task yields to Trio.  Without that descriptor
(an unknown Trio internals layout, a test clock) the task polls without blocking and waits
on the set with `trio.lowlevel.wait_readable` as the plain path does.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import trio

# numba ships wheels for Linux x86_64 / aarch64; elsewhere the plain path serves.  It is
# imported (about 0.7 s) only when a gateway builds its plane.
AVAILABLE = all(importlib.util.find_spec(m) is not None for m in ("numba", "numpy"))
MISSING = "" if AVAILABLE else "no module named numba (pip install numba)"
np: Any = None  # numpy, imported with the first plane

__all__ = ["AVAILABLE", "MISSING", "Driver", "NativePlane", "trio_epoll_fd"]

log = logging.getLogger("relay.native")

# what pump() returned
IDLE = 0  # nothing more to read (timeout, or a signal interrupted the wait)
PUNT = 1  # datagrams for Python: out[0] rows of `punts` (take_punts)
TRIO = 3  # Trio's epoll descriptor is readable: something else has work
BUDGET = 4  # handled `budget` readiness events: let others run
# kinds of handed-back datagrams
PUNT_CLIENT = 1  # from a listener socket: slot[:n]
PUNT_PEER = 2  # from a relay socket: slot[4:4+n] (room for the ChannelData header before)

SOCKADDR = 28  # room for a sockaddr_in6
EVENTS = 64
READS = 16  # datagrams read from one socket per readiness event
# counter columns (listener rows: rx = from clients, tx = to clients; cluster rows: rx =
# from peers, tx = to peers)
RX_P, RX_B, TX_P, TX_B = 0, 1, 2, 3
_EAGAIN = 11
_CLOCK_MONOTONIC = 1
# a peer -> client route for a permission (a Data indication to any port of the peer IP)
# rather than for one bound channel: this bit on the relay socket's fd in the key
_PERM_ROUTE = 1 << 40
# a client -> peer route for Send indications: (allocation id with this bit, peer address
# or address-with-any-port) -> (relay socket of the peer's family, cluster row); the
# client's own key with channel number 1 (never a channel) gives the allocation id
_SEND_ROUTE = 1 << 41
LEARNED = 64  # Data-indication routes to exact peer addresses learned per allocation
# drop columns, in the gateway's names
DROP_REASONS = ("send_buffer_full", "peer_not_allowed", "too_large")
_MSG_DONTWAIT = 0x40
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_sa4 = struct.Struct("=H2s4s8x")  # family (host order), port, address: sockaddr_in
_sa6 = struct.Struct("=H2sI16sI")  # family, port, flowinfo (network order), address, scope
_mmsghdr = struct.Struct("=QI4xQQ")  # msg_name, msg_namelen, msg_iov, msg_iovlen (LP64)


# One plane per Trio run may block in the driver: a second gateway in the same process
# (tests) would not be watched while the first one's loop sleeps, so it polls instead.
_DRIVING: trio.lowlevel.RunVar[bool] = trio.lowlevel.RunVar("relay_native_driving",
                                                            default=False)


def trio_epoll_fd() -> int | None:
    """The descriptor of the running Trio loop's epoll set, or None where it cannot be had
    (another I/O manager, another layout of Trio's internals, a clock that is not the
    system clock: a test's virtual time must not be slept through in epoll_wait, another
    plane already driven in this run).  Whoever gets it calls `release_driving` after."""
    if _DRIVING.get():
        return None
    try:
        if type(trio.lowlevel.current_clock()).__name__ != "SystemClock":
            return None
        from trio._core._run import GLOBAL_RUN_CONTEXT

        epoll = GLOBAL_RUN_CONTEXT.runner.io_manager._epoll
        fd = epoll.fileno()
    except (AttributeError, ImportError, RuntimeError, ValueError):
        return None
    if not isinstance(fd, int) or fd < 0:
        return None
    _DRIVING.set(True)
    return fd


def release_driving() -> None:
    _DRIVING.set(False)


def addr_key(addr: Any) -> tuple[int, int, int]:
    """An address as the compiled loop keys it: IPv4 in one int, IPv6 in three."""
    ip = addr[0]
    if ":" in ip:
        raw = socket.inet_pton(_AF_INET6, ip.split("%", 1)[0])
        return (int.from_bytes(raw[:8], "big", signed=True),
                int.from_bytes(raw[8:], "big", signed=True), (6 << 48) | addr[1])
    return 0, 0, (4 << 48) | (int.from_bytes(socket.inet_aton(ip), "big") << 16) | addr[1]


def sockaddr(addr: Any) -> bytes:
    """`addr` as a sockaddr_in / sockaddr_in6 for sendto."""
    ip = addr[0]
    port = struct.pack("!H", addr[1])
    if ":" in ip:
        host, _, scope = ip.partition("%")
        scope_id = addr[3] if len(addr) > 3 else 0
        if scope and not scope_id:
            scope_id = socket.if_nametoindex(scope) if not scope.isdigit() else int(scope)
        flow = socket.htonl(addr[2]) if len(addr) > 2 else 0
        return _sa6.pack(_AF_INET6, port, flow, socket.inet_pton(_AF_INET6, host), scope_id)
    return _sa4.pack(_AF_INET, port, socket.inet_aton(ip))


def from_sockaddr(sa: Any) -> tuple[Any, ...]:
    """The address tuple Python's recvfrom would have returned for the sockaddr `sa`."""
    raw = bytes(sa[:SOCKADDR])
    family = int.from_bytes(raw[:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == _AF_INET6:
        _f, _p, flow, host, scope = _sa6.unpack(raw)
        ip = socket.inet_ntop(_AF_INET6, host)
        if scope and host[:2] == b"\xfe\x80":
            try:
                ip = f"{ip}%{socket.if_indextoname(scope)}"
            except OSError:
                ip = f"{ip}%{scope}"
        return (ip, port, socket.ntohl(flow), scope)
    return (socket.inet_ntop(_AF_INET, raw[4:8]), port)


class _Table:
    """Route rows (numpy) with a free list; `ints` columns, one float (expiry), a sockaddr."""

    def __init__(self, columns: int, capacity: int = 256) -> None:
        self.ints = np.zeros((capacity, columns), np.int64)
        self.expires = np.zeros(capacity, np.float64)
        self.sa = np.zeros((capacity, SOCKADDR), np.uint8)
        self.free = list(range(capacity - 1, -1, -1))

    def take(self) -> int:
        if not self.free:
            old = len(self.expires)
            self.ints = np.concatenate([self.ints, np.zeros_like(self.ints)])
            self.expires = np.concatenate([self.expires, np.zeros_like(self.expires)])
            self.sa = np.concatenate([self.sa, np.zeros_like(self.sa)])
            self.free = list(range(2 * old - 1, old - 1, -1))
        return self.free.pop()

    def put(self, row: int) -> None:
        self.expires[row] = -1.0  # dead even if a stale key still pointed here
        self.free.append(row)


class NativePlane:
    """The Python side of the compiled loop: its buffers, forwarding table and counters.

    The gateway tells it about listeners (`add_listener` / `remove_listener`), about each
    allocation after a request of its client (`sync`) and when it ends (`drop`); `pump` runs
    the loop; `fold` adds the loop's counters into the stats objects."""

    def __init__(self, epfd: int, buffer: int) -> None:
        global np
        import numpy  # ImportError: the caller says which setting needs it

        from relay.net import native_loop

        np = numpy
        self.loop = native_loop.pump
        self.tables = native_loop
        self.epfd = epfd
        self.slots = np.zeros((READS, buffer), np.uint8)
        self.names = np.zeros((READS, SOCKADDR), np.uint8)
        # struct mmsghdr[READS] twice: reads of a listener socket (into the slots) and of a
        # relay socket (4 bytes into them), as u32 words: [2] msg_namelen, [14] msg_len
        self.mm = np.zeros((2, READS, 16), np.uint32)
        self.iov = np.zeros((2, READS, 2), np.uint64)
        raw = self.mm.view(np.uint8)
        for k, skip in enumerate((0, 4)):
            for i in range(READS):
                self.iov[k, i] = (self.slots.ctypes.data + i * buffer + skip, buffer - skip)
                _mmsghdr.pack_into(raw[k, i], 0, self.names.ctypes.data + i * SOCKADDR,
                                   SOCKADDR, self.iov.ctypes.data + (k * READS + i) * 16, 1)
        self.punts = np.zeros((READS, 4), np.int64)  # kind, fd, slot, length
        # a Data indication: its head (STUN header, XOR-PEER-ADDRESS, DATA's header) in
        # `ind`, sent with sendmsg from three pieces: head, the slot's payload, padding
        self.ind = np.zeros(48, np.uint8)
        self.pad = np.zeros(4, np.uint8)
        self.iov_out = np.zeros((3, 2), np.uint64)
        self.iov_out[0, 0] = self.ind.ctypes.data
        self.iov_out[2, 0] = self.pad.ctypes.data
        self.msg = np.zeros(7, np.uint64)  # struct msghdr
        self.msg[2] = self.iov_out.ctypes.data
        self.msg[3] = 3
        self.rng = np.frombuffer(bytearray(os.urandom(8)), np.int64).copy()
        self.rng[0] |= 1  # xorshift: never all zeros
        self.psa = np.zeros(SOCKADDR, np.uint8)  # a Send indication's peer, as a sockaddr
        self.found = np.zeros(6, np.int64)  # and what else parse_send found
        self.events = np.zeros(EVENTS * 12, np.uint8)
        self.out = np.zeros(4, np.int64)  # how many punts; a timespec
        self.listeners = native_loop.new_fds()  # fd -> counter row
        self.listener_traffic: list[Any] = []  # counter row -> the listener's Traffic
        self.listener_rows: dict[int, int] = {}  # fd -> row (rows are reused)
        # (listener fd << 16 | channel, client address) -> up row;
        # (relay fd, peer address) -> down row
        self.up = native_loop.new_routes()
        self.down = native_loop.new_routes()
        self.up_rows = _Table(3)  # relay socket fd, sockaddr length, cluster row
        self.down_rows = _Table(5)  # listener fd, sockaddr length, cluster row, lis row, number
        self.cluster_rows: dict[int, int] = {}  # id(ConnectionStats) -> row
        self.cluster_traffic: list[Any] = []
        self.lis_ctr = np.zeros((8, 4), np.int64)
        self.cl_ctr = np.zeros((8, 4), np.int64)
        # drops by reason, then (last) datagrams forwarded since the last fold
        self.drops = np.zeros(len(DROP_REASONS) + 1, np.int64)
        # allocation -> its routes: (is_up, key, row)
        self.routes: dict[Any, list[tuple[bool, tuple[int, int, int, int], int]]] = {}
        # allocation -> (listener counter row, listener fd, client sockaddr)
        self.client_of: dict[Any, tuple[int, int, bytes]] = {}
        self.alloc_ids: dict[Any, int] = {}  # allocation -> its id in Send routes
        self.next_id = 1
        self.forwarded = 0  # datagrams the compiled loop has forwarded (or tried to)
        # compiled now (or loaded from the cache), not mid-traffic
        self.pump(-1, 0, 1, 0.0)
        for table in (self.up, self.down):
            native_loop.route_set(table, 0, 0, 0, 0, 0)
            native_loop.route_del(table, 0, 0, 0, 0, 0)
            native_loop.route_get(table, 0, 0, 0, 0)
        native_loop.fd_set(self.listeners, -1, 0)
        native_loop.fd_del(self.listeners, -1)
        native_loop.size(self.up)
        native_loop.parse_send(self.slots[0], 0, self.psa, self.found)

    # -- the loop ------------------------------------------------------------------------

    def pump(self, nest: int, timeout_ms: int, budget: int, now: float) -> int:
        up, dn = self.up_rows, self.down_rows
        return int(self.loop(self.epfd, nest, timeout_ms, budget, now, self.events, self.slots,
                         self.names, self.mm, self.punts, self.out, self.ind, self.msg,
                         self.iov_out, self.rng, self.psa, self.found, self.listeners,
                         self.up, self.down,
                         up.ints, up.expires, up.sa, dn.ints, dn.expires, dn.sa,
                         self.lis_ctr, self.cl_ctr, self.drops))

    def take_punts(self) -> list[tuple[int, int, int, memoryview, Any]]:
        """The datagrams the loop handed back, copied out of their slots: (kind, socket fd,
        length, data, source address); a relay socket's datagram comes after 4 bytes of
        room for the ChannelData header."""
        taken = []
        for i in range(int(self.out[0])):
            kind, fd, slot, n = (int(v) for v in self.punts[i])
            raw = self.slots[slot]
            if kind == PUNT_CLIENT:
                data = memoryview(raw[: max(n, 4)].tobytes())  # [0] read even when n == 0
            else:
                data = memoryview(bytearray(raw[: 4 + n].tobytes()))
            taken.append((kind, fd, n, data, from_sockaddr(self.names[slot])))
        return taken

    def fold(self, drops: dict[str, int]) -> None:
        """Add the loop's counters into the stats objects and zero them."""
        if not self.drops[-1]:
            return  # nothing forwarded or dropped since the last fold
        self.forwarded += int(self.drops[-1])
        ctr = self.lis_ctr
        if ctr.any():
            for row, traffic in enumerate(self.listener_traffic):
                rx_p, rx_b, tx_p, tx_b = (int(v) for v in ctr[row])
                if traffic is not None and (rx_p or tx_p):
                    traffic.rx_packets += rx_p
                    traffic.rx_bytes += rx_b
                    traffic.tx_packets += tx_p
                    traffic.tx_bytes += tx_b
            ctr[:] = 0
        ctr = self.cl_ctr
        if ctr.any():
            for row, traffic in enumerate(self.cluster_traffic):
                rx_p, rx_b, tx_p, tx_b = (int(v) for v in ctr[row])
                if rx_p or tx_p:
                    traffic.rx_packets += rx_p
                    traffic.rx_bytes += rx_b
                    traffic.tx_packets += tx_p
                    traffic.tx_bytes += tx_b
            ctr[:] = 0
        for i, reason in enumerate(DROP_REASONS):
            if self.drops[i]:
                drops[reason] += int(self.drops[i])
        self.drops[:] = 0

    # -- listeners -----------------------------------------------------------------------

    def add_listener(self, fd: int, traffic: Any) -> None:
        free = [i for i, t in enumerate(self.listener_traffic) if t is None]
        if free:
            row = free[0]
            self.listener_traffic[row] = traffic
        else:
            row = len(self.listener_traffic)
            self.listener_traffic.append(traffic)
            if row >= len(self.lis_ctr):
                self.lis_ctr = np.concatenate([self.lis_ctr, np.zeros_like(self.lis_ctr)])
        self.listener_rows[fd] = row
        self.tables.fd_set(self.listeners, fd, row)

    def remove_listener(self, fd: int, drops: dict[str, int]) -> None:
        """Forget a listener (before its socket closes); its counters are folded first."""
        row = self.listener_rows.pop(fd, None)
        if row is None:
            return
        self.fold(drops)
        self.listener_traffic[row] = None
        self.tables.fd_del(self.listeners, fd)

    # -- routes --------------------------------------------------------------------------

    def _cluster_row(self, stats: Any) -> int:
        row = self.cluster_rows.get(id(stats))
        if row is None or self.cluster_traffic[row] is not stats.traffic:
            row = len(self.cluster_traffic)
            self.cluster_rows[id(stats)] = row
            self.cluster_traffic.append(stats.traffic)
            if row >= len(self.cl_ctr):
                self.cl_ctr = np.concatenate([self.cl_ctr, np.zeros_like(self.cl_ctr)])
        return row

    def drop(self, alloc: Any) -> None:
        """Forget an allocation's routes (it ended, or its client is not on a UDP listener)."""
        self.client_of.pop(alloc, None)
        self.alloc_ids.pop(alloc, None)
        for is_up, key, row in self.routes.pop(alloc, ()):
            table, rows = (self.up, self.up_rows) if is_up else (self.down, self.down_rows)
            if row < 0:  # the client's key for Send routes: its value is the id, no row
                self.tables.route_del(table, *key, self.tables.route_get(table, *key))
                continue
            self.tables.route_del(table, *key, row)
            rows.put(row)

    def sync(self, alloc: Any, listener_fd: int, allowed: Any) -> None:
        """Make the allocation's routes what its channels and permissions say now.

        `listener_fd`: the TURN-UDP listener socket of its client; `allowed(ip, port)`: the
        peer policy for a permission that does not admit every port (as the plain path asks
        per datagram)."""
        self.drop(alloc)
        if not alloc.alive or not (alloc.channels or alloc.permissions):
            return
        lis_row = self.listener_rows.get(listener_fd)
        if lis_row is None:
            return
        self.routes[alloc] = []
        ca, cb, cc = addr_key(alloc.client)
        client_sa = sockaddr(alloc.client)
        self.client_of[alloc] = (lis_row, listener_fd, client_sa)
        for number, chan in alloc.channels.items():
            perm = alloc.permissions.get(chan.peer[0])
            sock = getattr(chan.endpoint, "sock", None)
            if perm is None or sock is None or sock.fileno() < 0:
                continue
            expires = min(perm.expires, chan.expires)
            cl = self._cluster_row(perm.cluster)
            peer_sa = sockaddr(chan.peer)
            relay_fd = sock.fileno()
            self._route(alloc, True, ((listener_fd << 16) | number, ca, cb, cc),
                        (relay_fd, len(peer_sa), cl), expires, peer_sa)
            if not (perm.any_port or allowed(chan.peer[0], chan.peer[1])):
                continue  # the plain path asks the policy per datagram: leave it that
            self._route(alloc, False, (relay_fd, *addr_key(chan.peer)),
                        (listener_fd, len(client_sa), cl, lis_row, number), expires, client_sa)
        if alloc.permissions:  # Send indications: the client's key gives its id
            alloc_id = self.alloc_ids[alloc] = self.next_id
            self.next_id += 1
            key = ((listener_fd << 16) | 1, ca, cb, cc)
            self.tables.route_set(self.up, *key, alloc_id)
            self.routes[alloc].append((True, key, -1))
        for ip, perm in alloc.permissions.items():
            relay_fd = _relay_fd(alloc, ip)
            if not perm.any_port or relay_fd < 0:
                continue  # the policy per datagram, or nothing to read it from: Python
            peer_key = addr_key((ip, 0))
            self._send_route(alloc, relay_fd, peer_key, perm)
            self._data_route(alloc, (relay_fd | _PERM_ROUTE, *peer_key), perm)

    def _route(self, alloc: Any, is_up: bool, key: tuple[int, int, int, int],
               ints: tuple[int, ...], expires: float, sa: bytes = b"") -> None:
        """One row into the client -> peer (`is_up`) or the peer -> client table, owned by
        `alloc` (dropped with its routes)."""
        rows = self.up_rows if is_up else self.down_rows
        row = rows.take()
        rows.ints[row] = ints
        rows.expires[row] = expires
        rows.sa[row, : len(sa)] = np.frombuffer(sa, np.uint8)
        self.tables.route_set(self.up if is_up else self.down, *key, row)
        self.routes[alloc].append((is_up, key, row))

    def _data_route(self, alloc: Any, key: tuple[int, int, int, int], perm: Any) -> None:
        """A peer -> client row that sends Data indications (no channel number)."""
        lis_row, listener_fd, client_sa = self.client_of[alloc]
        self._route(alloc, False, key, (listener_fd, len(client_sa),
                                        self._cluster_row(perm.cluster), lis_row, -1),
                    perm.expires, client_sa)

    def _send_route(self, alloc: Any, relay_fd: int, peer_key: tuple[int, int, int],
                    perm: Any) -> None:
        """A client -> peer row for Send indications (the peer comes from each message)."""
        self._route(alloc, True, (self.alloc_ids[alloc] | _SEND_ROUTE, *peer_key),
                    (relay_fd, 0, self._cluster_row(perm.cluster)), perm.expires)

    def learn_send(self, alloc: Any, peer: tuple[str, int], allowed: Any) -> None:
        """After Python forwarded a Send indication to `peer` (a permission the policy is
        asked about per port): the same for this exact peer address until the routes are
        rebuilt (`sync`), at most `LEARNED` per allocation."""
        routes = self.routes.get(alloc)
        if routes is None or alloc not in self.alloc_ids or len(routes) >= LEARNED + 2 * len(
                alloc.channels) + 2 * len(alloc.permissions) + 1:
            return
        ip, port = peer
        perm = alloc.permissions.get(ip)
        relay_fd = _relay_fd(alloc, ip)
        if perm is None or relay_fd < 0 or not allowed(ip, port):
            return
        self._send_route(alloc, relay_fd, addr_key(peer), perm)

    def learn(self, alloc: Any, relay_fd: int, peer: Any, allowed: Any) -> None:
        """After Python sent a Data indication for a datagram from `peer` on `relay_fd`
        (no channel, a permission the policy is asked about per port): the same answer for
        this exact peer address until the permission lapses or the allocation's routes are
        rebuilt (`sync`).  At most `LEARNED` such routes per allocation."""
        routes = self.routes.get(alloc)
        if routes is None or len(routes) >= LEARNED + 2 * len(alloc.channels) \
                + len(alloc.permissions):
            return
        ip, port = peer[0], peer[1]
        perm = alloc.permissions.get(ip)
        if perm is None or (ip, port) in alloc.peer_channels or not allowed(ip, port):
            return
        self._data_route(alloc, (relay_fd, *addr_key((ip, port))), perm)

    def route_counts(self) -> tuple[int, int]:
        """(client -> peer routes, peer -> client routes) in the table."""
        return self.tables.size(self.up), self.tables.size(self.down)


def _relay_fd(alloc: Any, ip: str) -> int:
    """The allocation's open relay socket of `ip`'s family, or -1."""
    sock = getattr(alloc.relays.get(2 if ":" in ip else 1), "sock", None)
    return -1 if sock is None else int(sock.fileno())


class Driver(trio.abc.Instrument):
    """Runs the compiled loop where Trio would sleep.

    Trio calls `before_io_wait(timeout)` right before it blocks in its own epoll_wait for
    `timeout`; the driver runs the loop there instead, blocking in the plane's epoll_wait
    (at most `WAIT` at a time) with Trio's epoll descriptor in the set, so that any other
    I/O ends the wait at once.  Datagrams the loop hands back go to `handle` (the gateway's
    Python path) right there, and the loop goes on until Trio's timeout is spent, Trio has
    I/O, or a handled datagram made a task runnable; when it stops for another reason than
    Trio's I/O, Trio's own wait must not follow, so the driver wakes Trio
    (`run_sync_soon`).  With tasks runnable the timeout is 0: the loop forwards what is
    queued and returns.  Counters are folded on every return.

    The handlers are the synchronous code the plain loops run per datagram (the core's
    answer and effects: tasks it starts go to their nurseries as from any task)."""

    WAIT = 0.05  # at most this long in one wait: `now` (for route expiry) is that fresh

    def __init__(self, plane: NativePlane, nest: int, budget: int, drops: dict[str, int],
                 handle: Callable[[int, int, int, memoryview, Any], None]) -> None:
        self.plane = plane
        self.nest = nest
        self.budget = budget
        self.drops = drops
        self.handle = handle
        self.token = trio.lowlevel.current_trio_token()
        self.now = trio.current_time
        self.statistics = trio.lowlevel.current_statistics
        self.logged = 0.0

    def before_io_wait(self, timeout: float) -> None:
        # Trio drops an instrument that raises: the plane would stop without a word.
        try:
            self._run(timeout)
        except trio.RunFinishedError:
            pass  # the run is ending: nobody to wake
        except Exception:  # a bug of ours: say so, go on forwarding
            if time.monotonic() - self.logged >= 1.0:
                self.logged = time.monotonic()
                log.exception("native data plane: error in the loop's driver")

    def _run(self, timeout: float) -> None:
        plane = self.plane
        clock = time.perf_counter
        end = clock() + timeout
        handled = 0
        while True:
            left = end - clock()
            ms = int(min(left, self.WAIT) * 1000.0 + 0.999) if left > 0 else 0
            # Blocking, the loop comes back for Trio's I/O and at Trio's deadline anyway:
            # the budget only bounds the time between two folds of the counters.
            code = plane.pump(self.nest, ms, self.budget * 16 if ms else self.budget,
                              self.now())
            if code != PUNT:
                break
            for punt in plane.take_punts():
                self.handle(*punt)
                handled += 1
            if handled >= self.budget or self.statistics().tasks_runnable:
                break  # let the tasks run (a new allocation's, say)
        plane.fold(self.drops)
        if timeout > 0 and code != TRIO:
            self.token.run_sync_soon(_nothing)  # Trio's timeout is spent, or a task runs


def _nothing() -> None:
    pass
