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
registration in the epoll set.  Deleting an allocation cancels that task and closes its
relay sockets (out of the epoll set first), so their ports go back to the pool; cancelling
the gateway deletes every allocation.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import random
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from relay.config import Config, ListenerConfig
from relay.metrics.stats import TurnStats
from relay.net.forward import forward_channel_data
from relay.net.stream import StreamConnection, serve_connection, tls_context
from relay.stun.fastpath import data_indication, scan_send_indication
from relay.turn.allocation import Allocation
from relay.turn.policy import PeerPolicy
from relay.turn.server import FAMILY_V4, FAMILY_V6, ListenerState, TurnServer

log = logging.getLogger("relay.gateway")

BATCH = 64  # datagrams handled before yielding to the scheduler
BUFFER = 65536 + 64
SWEEP_INTERVAL = 1.0
DNS_INTERVAL = 30.0  # STRICT_DNS clusters are re-resolved this often
_AF = {FAMILY_V4: socket.AF_INET, FAMILY_V6: socket.AF_INET6}
_SEND_INDICATION = b"\x00\x16"
_pack_head = struct.Struct("!HH").pack_into


class UdpRelay:
    """A relayed transport address: a bound non-blocking UDP socket from the port pool."""

    __slots__ = ("family", "ip", "pool", "port", "sock")

    def __init__(self, family: int, ip: str, port: int, sock: socket.socket,
                 pool: RelayPorts) -> None:
        self.family = family
        self.ip = ip
        self.port = port
        self.sock = sock
        self.pool = pool

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        if self.pool.closing is not None:
            self.pool.closing(self)  # out of the reader's epoll set first
        self.sock.close()
        self.pool.release(self.family, self.port)


class RelayPorts:
    """The relay port range, shared by all listeners; one used-set per address family."""

    MAX_BIND_TRIES = 64

    def __init__(self, min_port: int, max_port: int, buffer: int) -> None:
        self.min_port = min_port
        self.max_port = max_port
        self.buffer = buffer
        self.used: dict[int, set[int]] = {FAMILY_V4: set(), FAMILY_V6: set()}
        self.closing: Callable[[UdpRelay], None] | None = None  # told before a socket closes

    def release(self, family: int, port: int) -> None:
        self.used[family].discard(port)

    def _bind(self, family: int, bind_ip: str, port: int) -> socket.socket | None:
        sock = socket.socket(_AF[family], socket.SOCK_DGRAM)
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
            raise
        return sock

    def open(self, family: int, mode: str, bind_ip: str, adv_ip: str
             ) -> tuple[UdpRelay, UdpRelay | None]:
        """Bind a relay socket; mode "any", "even" or "pair" (even port + the next one
        reserved).  OSError when the range is exhausted."""
        used = self.used[family]
        lo, hi = self.min_port, self.max_port
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
                continue
            nxt: UdpRelay | None = None
            if mode == "pair":
                sock2 = self._bind(family, bind_ip, port + 1)
                if sock2 is None:
                    sock.close()
                    continue
                used.add(port + 1)
                nxt = UdpRelay(family, adv_ip, port + 1, sock2, self)
            used.add(port)
            return UdpRelay(family, adv_ip, port, sock, self), nxt
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


def relay_addresses(lis: ListenerConfig, relay_v4: str, relay_v6: str
                    ) -> dict[int, tuple[str, str]]:
    """family -> (bind ip, advertised ip) of a listener's relay sockets.

    Advertised: `turn.relay_address(_v6)` when set; else the listener's own address when it
    is specific; a loopback listener offers both loopback families; a wildcard listener
    advertises the host's primary address of its family."""
    out: dict[int, tuple[str, str]] = {}
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
        out[family] = (bind, adv)
    return out


class Gateway:
    """The sockets and loops around one `TurnServer`."""

    def __init__(self, config: Config, stats: TurnStats,
                 own_addresses: Iterable[tuple[str, int]] = ()) -> None:
        """`own_addresses`: where the rest of relay listens (admin, signaling), refused as
        peers like the listeners themselves."""
        self.config = config
        cfg = config
        self.stats = stats
        self.own_addresses = set(own_addresses)  # plus each listener, once bound
        self.bound_ports: dict[str, int] = {}  # listener name -> port as really bound
        self.ports = RelayPorts(cfg.turn.min_port, cfg.turn.max_port, cfg.turn.udp_receive_buffer)
        self.policy = PeerPolicy.from_config(cfg)
        self.server = TurnServer(
            cfg, stats, self.policy, self._open_relay,
            on_created=self._created, on_deleted=self._deleted,
        )
        self.sockets: dict[str, socket.socket] = {}  # TURN-UDP listeners
        # TURN-TCP / TURN-TLS listeners: name -> (listening socket, TLS context or None)
        self.stream_sockets: dict[str, tuple[trio.socket.SocketType, ssl.SSLContext | None]] = {}
        self.streams: dict[tuple[str, Any], StreamConnection] = {}  # (listener, client) -> conn
        self.relay_ips: dict[str, dict[int, tuple[str, str]]] = {}
        self.alloc_nursery: trio.Nursery | None = None
        self.epoll = select.epoll()
        self.relay_fds: dict[int, tuple[Any, ...]] = {}
        self.ports.closing = self._forget
        self.relay_buf = bytearray(BUFFER)
        self.relay_view = memoryview(self.relay_buf)
        for c in cfg.clusters:
            self.stats.cluster(c.name)

    # -- factory and hooks called by the core ---------------------------------------------

    def _open_relay(self, listener: str, family: int, mode: str) -> tuple[Any, Any]:
        bind, adv = self.relay_ips[listener][family]
        return self.ports.open(family, mode, bind, adv)

    def _created(self, alloc: Allocation) -> None:
        assert self.alloc_nursery is not None
        # (send(data, client) towards the client, cancel scope): the UDP listener socket's
        # sendto, or the stream connection's send_frame (which pads ChannelData to 4 bytes).
        sock = self.sockets.get(alloc.listener)
        if sock is not None:
            alloc.io = (sock.sendto, None)
        else:
            conn = self.streams[(alloc.listener, alloc.client)]
            conn.allocation_created(alloc)
            alloc.io = (conn.send_frame, None)
        self.alloc_nursery.start_soon(self._run_allocation, alloc)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("allocation %s for %s on %s: relays %s", alloc.user_id, alloc.client,
                      alloc.listener, [(ep.ip, ep.port) for ep in alloc.relays.values()])

    def _deleted(self, alloc: Allocation) -> None:
        # The core closes the relay sockets next (forgotten by the reader first).
        scope = alloc.io[1] if alloc.io is not None else None
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
        cfg = self.config
        for lis in cfg.listeners:
            fam = FAMILY_V6 if ":" in lis.address else FAMILY_V4
            if lis.protocol != "TURN-UDP":
                port = self._bind_stream(lis, fam)
                self._add_listener(lis, port, "tls" if lis.protocol == "TURN-TLS" else "tcp")
                continue
            sock = socket.socket(_AF[fam], socket.SOCK_DGRAM)
            try:
                if fam == FAMILY_V6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setblocking(False)
                _set_buffers(sock, cfg.turn.udp_receive_buffer)
                sock.bind((lis.address, lis.port))
            except OSError as exc:
                sock.close()
                raise OSError(
                    exc.errno, f"listener {lis.name}: cannot bind {lis.address}:{lis.port}: "
                    f"{exc.strerror}"
                ) from None
            self.sockets[lis.name] = sock
            self._add_listener(lis, sock.getsockname()[1], "udp")
        self.policy.set_own_addresses(self.own_addresses)

    def _bind_stream(self, lis: ListenerConfig, fam: int) -> int:
        """A listening TCP socket for a TURN-TCP or TURN-TLS listener; its bound port."""
        ctx = tls_context(lis.cert, lis.key) if lis.protocol == "TURN-TLS" else None
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
                exc.errno, f"listener {lis.name}: cannot bind {lis.address}:{lis.port}/tcp: "
                f"{exc.strerror}"
            ) from None
        self.stream_sockets[lis.name] = (trio.socket.from_stdlib_socket(sock), ctx)
        return int(sock.getsockname()[1])

    def _add_listener(self, lis: ListenerConfig, port: int, transport: str) -> None:
        cfg = self.config
        self.own_addresses.add((lis.address, port))
        relays = relay_addresses(lis, cfg.turn.relay_address, cfg.turn.relay_address_v6)
        if not relays:
            log.warning("listener %s: no relay address; set turn.relay_address", lis.name)
        self.relay_ips[lis.name] = relays
        self.server.add_listener(lis.name, frozenset(relays), transport)
        self.bound_ports[lis.name] = port

    async def stream_listener_loop(self, name: str) -> None:
        """Accept TURN-TCP / TURN-TLS connections, each served in its own task."""
        sock, ctx = self.stream_sockets[name]
        handler = functools.partial(serve_connection, self, self.server.listeners[name], ctx)
        await trio.serve_listeners(handler, [trio.SocketListener(sock)])

    def close(self) -> None:
        self.server.close_all(trio.current_time())
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
        clusters = [c for c in self.config.clusters if c.type == "STRICT_DNS"]
        if not clusters:
            return
        while True:
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
            self.server.sweep(trio.current_time())

    async def listener_loop(self, lis: ListenerState, sock: socket.socket) -> None:
        """Client -> relay: ChannelData and Send indications forwarded, requests answered."""
        buf = bytearray(BUFFER)
        view = memoryview(buf)
        recv = sock.recvfrom_into
        send = sock.sendto
        allocs = lis.allocations
        traffic = lis.stats.traffic
        drops = self.stats.drops
        server = self.server
        policy = self.policy
        name = lis.name
        latency = self.stats.request_latency
        wait = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        clock = trio.current_time
        wall = time.time
        perf = time.perf_counter
        chan_hi = self.server.channel_max >> 8  # 0x4F, or 0x7F with turn.rfc5766_channels
        while True:
            await wait(sock)
            handled = 0
            while True:
                try:
                    n, addr = recv(buf)
                except BlockingIOError:
                    break
                except OSError:
                    if sock.fileno() < 0:
                        return
                    continue  # an error report for an earlier send; nothing to read
                traffic.rx_packets += 1
                traffic.rx_bytes += n
                first = buf[0]
                if 0x40 <= first <= chan_hi:  # ChannelData
                    alloc = allocs.get(addr)
                    if alloc is None or n < 4:
                        drops["no_allocation" if alloc is None else "malformed"] += 1
                    else:
                        forward_channel_data(alloc, view, n, drops)
                elif first < 0x40 and n >= 20:  # STUN: the top two bits are zero
                    if buf[0:2] == _SEND_INDICATION:
                        self.forward_send_indication(allocs, addr, view, n, name, policy, drops)
                    else:
                        t0 = perf()
                        reply = server.handle(lis, addr, bytes(view[:n]), clock(), wall())
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
                handled += 1
                if handled >= BATCH:
                    handled = 0
                    await checkpoint()

    def forward_send_indication(
        self, allocs: dict[Any, Allocation], addr: Any, view: memoryview, n: int, name: str,
        policy: PeerPolicy, drops: dict[str, int],
    ) -> None:
        """Client -> peer: the DATA of the Send indication in `view[:n]` from `addr`, or count
        why not (shared by the UDP and the stream listeners)."""
        alloc = allocs.get(addr)
        if alloc is None:
            drops["no_allocation"] += 1
            return
        found = scan_send_indication(view, n)
        if found is None:
            drops["malformed"] += 1
            return
        ip, port, payload = found
        perm = alloc.permissions.get(ip)
        if perm is None:
            drops["no_permission"] += 1
            return
        if not perm.any_port and not policy.check(name, ip, port).allowed:
            drops["peer_not_allowed"] += 1
            return
        ep = alloc.relays.get(FAMILY_V6 if ":" in ip else FAMILY_V4)
        if ep is None:
            drops["peer_not_allowed"] += 1
            return
        try:
            ep.sock.sendto(payload, (ip, port))  # type: ignore[attr-defined]
            ct = perm.cluster.traffic
            ct.tx_packets += 1
            ct.tx_bytes += len(payload)
        except BlockingIOError:
            drops["send_buffer_full"] += 1
        except OSError:
            drops["peer_not_allowed"] += 1

    async def _run_allocation(self, alloc: Allocation) -> None:
        """The allocation's task: its relay sockets are served while it runs.

        Deleting the allocation cancels it; cancelling it (gateway shutdown) deletes the
        allocation.  The sockets themselves are read by `relay_reader`, which waits on one
        epoll set for all of them (a task per socket would re-arm Trio's epoll on every
        wake-up)."""
        with trio.CancelScope() as scope:
            alloc.io = (alloc.io[0], scope)
            try:
                for ep in list(alloc.relays.values()):
                    if alloc.alive and isinstance(ep, UdpRelay) and ep.sock.fileno() >= 0:
                        self._watch(alloc, ep)
                if alloc.alive:
                    await trio.sleep_forever()
            finally:
                if alloc.alive:  # cancelled from outside: the allocation goes with its task
                    self.server.delete(alloc, trio.current_time())

    def _watch(self, alloc: Allocation, ep: UdpRelay) -> None:
        fd = ep.sock.fileno()
        lis = self.server.listeners[alloc.listener]
        self.relay_fds[fd] = (
            ep.sock.recvfrom_into, alloc.io[0], alloc.client, alloc.permissions,
            alloc.peer_channels, lis.stats.traffic, ep.family == FAMILY_V6, alloc,
        )
        self.epoll.register(fd, select.EPOLLIN)

    def _forget(self, ep: UdpRelay) -> None:
        """Called before a relay socket closes: its fd number may be reused at once."""
        fd = ep.sock.fileno()
        if self.relay_fds.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    async def relay_reader(self) -> None:
        """Peer -> relay -> client for every relay socket: ChannelData when a channel is
        bound, else a Data indication."""
        epoll = self.epoll
        poll = epoll.poll
        fds = self.relay_fds
        # One receive buffer for every relay socket (64 KiB per allocation otherwise).
        buf = self.relay_buf
        view = self.relay_view
        body = view[4:]
        drops = self.stats.drops
        policy = self.policy
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
                recv, send, client, perms, chans, ltraffic, v6, alloc = entry
                name = alloc.listener
                for _ in range(BATCH):
                    try:
                        n, addr = recv(body)
                    except OSError:  # BlockingIOError: drained; others: nothing to read
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
                    try:
                        if chan is not None:
                            _pack_head(buf, 0, chan.number, n)
                            sent = send(view[: 4 + n], client)
                        else:
                            sent = send(
                                data_indication(alloc.indication_id(), ip, addr[1], body[:n]),
                                client,
                            )
                        ltraffic.tx_packets += 1
                        ltraffic.tx_bytes += sent
                    except BlockingIOError:
                        drops["send_buffer_full"] += 1
                    except (OSError, ValueError):
                        drops["too_large"] += 1
            await checkpoint()


async def serve_gateway(
    config: Config,
    stats: TurnStats,
    own_addresses: Iterable[tuple[str, int]] = (),
    *,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind every listener (TURN-UDP, TURN-TCP, TURN-TLS), then serve until cancelled;
    releases all on the way out.  `task_status.started(gateway)`: `gateway.bound_ports`
    holds each listener's bound port."""
    gw = Gateway(config, stats, own_addresses)
    try:
        gw.bind_listeners()
        async with trio.open_nursery() as nursery:
            gw.alloc_nursery = await nursery.start(_alloc_nursery)
            for name, sock in gw.sockets.items():
                nursery.start_soon(gw.listener_loop, gw.server.listeners[name], sock)
            for name in gw.stream_sockets:
                nursery.start_soon(gw.stream_listener_loop, name)
            nursery.start_soon(gw.sweeper)
            nursery.start_soon(gw.relay_reader)
            nursery.start_soon(gw.resolve_clusters)
            task_status.started(gw)
    finally:
        gw.close()


async def _alloc_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()
