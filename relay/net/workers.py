"""TURN on every core: worker processes sharing the listener ports (`turn.workers` > 1).

The supervisor (in the main process, beside the admin app and signaling) binds, per
TURN-UDP listener, one `SO_REUSEPORT` socket per worker and keeps every one of them open as
long as the listener exists, handing worker *i* its socket *i*.  The kernel picks a group
member by a hash of the client's 4-tuple; since the group never changes, neither does a
client's worker, also while another worker is down or after it restarts (docs/workers.md
has the measurements).  A TURN-TCP/TLS listener is one listening socket shared by every worker: a
connection lives in the worker that accepted it.

Each worker (`python -m relay.net.worker`) runs the ordinary gateway (`serve_gateway`) in
its own Trio loop with:
- its listener sockets (`WorkerShare.sockets`);
- its slice of the relay port range, so ports never collide;
- the nonce key of the server, so a nonce from one worker is good in every other;
- the shared quota ledger (`relay.net.shared_quota`): `user_quota` and `total_quota` hold
  for the whole server;
- its share of the 401/438 guard (rate and burst divided by the worker count, in
  `TurnServer`), so the server as a whole never answers more than the configured rate.

It reports its counters (`TurnStats`, pickled) on its stdout every `REPORT_INTERVAL`; the
supervisor sums the last reports into the `TurnStats` the collector reads, so `/metrics`
shows the same names and values as one process would (a gone worker's counters are kept,
its gauges dropped).  A worker that exits is logged and restarted after `RESTART_DELAY`;
while it is down `/ready` fails and `/status` shows it.

Reload and drain (`relay.lifecycle` calls `reconfigure` and `drain` as on a `Gateway`) go to
the workers over their stdin: each worker reloads its own gateway from its share of the new
config; a drain makes each worker refuse new allocations and report once its last one
ended (or its grace period is over); the drain is over when every worker has, then relay
stops them (they exit 0).  A worker that exits during a drain is not restarted.
Listeners are added, removed and re-bound live, as in one process: the supervisor binds a
new listener's sockets (before it tells any worker, so a bind error refuses the reload
everywhere) and hands each worker its own over a unix socket pair (`SCM_RIGHTS`) just
before the config; a worker never binds a listener itself.  A removed listener's sockets
stay in the supervisor until no worker serves it any more (each drains it as one process
does), so the `SO_REUSEPORT` group keeps its order while any worker still drains.
Stopping closes each worker's stdin (it stops at once) and waits `STOP_TIMEOUT` before
SIGKILL; a worker whose stdin closes because the supervisor died stops too.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from relay.config import Config, ListenerConfig
from relay.health import HealthState, WorkerStatus
from relay.net.gateway import same_binding
from relay.net.shared_quota import SharedQuota
from relay.net.stream import tls_context
from relay.turn.stats import TurnStats, add_stats, reset_stats

log = logging.getLogger("relay.workers")

REPORT_INTERVAL = 0.25
RESTART_DELAY = 0.5
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
MAX_HANDED = 250  # listener sockets one reload can hand a worker (SCM_MAX_FD is 253)
_len = struct.Struct("!I")


@attrs.frozen
class WorkerSpec:
    """What a worker gets on its stdin (pickled) before it starts."""

    index: int
    config: Config  # its own: port slice, 401 share, workers=1
    own_addresses: frozenset[tuple[str, int]]
    fds: dict[str, int]  # listener name -> inherited socket descriptor
    channel_fd: int  # its end of the descriptor channel (listener sockets on reload)
    quota_fd: int
    workers: int
    nonce_key: bytes
    loglevel: int


def port_slices(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """`lo..hi` cut into `n` disjoint slices, each starting on an even port where it can."""
    span = hi - lo + 1
    out = []
    for i in range(n):
        a = lo + span * i // n
        b = lo + span * (i + 1) // n - 1
        out.append((a, b))
    return out


def worker_config(config: Config, index: int, workers: int) -> Config:
    """Worker `index`'s config: its slice of the relay port range (and of each listener's
    own range), one process, no signaling."""
    lo, hi = port_slices(config.turn.min_port, config.turn.max_port, workers)[index]
    listeners = []
    for lis in config.listeners:
        if lis.min_relay_port or lis.max_relay_port:
            a, b = port_slices(*lis.relay_port_range(config.turn), workers)[index]
            lis = attrs.evolve(lis, min_relay_port=a, max_relay_port=b)
        listeners.append(lis)
    turn = attrs.evolve(config.turn, min_port=lo, max_port=hi, workers=1)
    return attrs.evolve(config, turn=turn, listeners=tuple(listeners), signaling=None)


def _bind(lis: ListenerConfig, port: int, key: str) -> socket.socket:
    """A listener's socket for the workers: TURN-UDP, one member of the `SO_REUSEPORT`
    group on `port`; TURN-TCP/TLS, the one listening socket they all accept from.  `key`
    names the listener in the config, for errors."""
    fam = socket.AF_INET6 if ":" in lis.address else socket.AF_INET
    udp = lis.protocol == "TURN-UDP"
    sock = socket.socket(fam, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT if udp else socket.SO_REUSEADDR,
                        1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((lis.address, port))
        if not udp:
            sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"{key}.port (listener {lis.name}): cannot bind "
                      f"{lis.address}:{port}/{'udp' if udp else 'tcp'}: {exc.strerror}"
                      ) from None
    return sock


@attrs.define
class Group:
    """One listener's sockets in the supervisor: `socks[i]` is worker *i*'s (TURN-UDP: a
    member of the `SO_REUSEPORT` group; TURN-TCP/TLS: the same listening socket for all)."""

    lis: ListenerConfig
    port: int  # as bound (the config may ask for 0)
    socks: list[socket.socket]

    def close(self) -> None:
        for s in {id(s): s for s in self.socks}.values():
            s.close()


def bind_group(lis: ListenerConfig, workers: int, udp_buffer: int, key: str) -> Group:
    """Bind one listener for `workers` workers; nothing stays open on an error."""
    first = _bind(lis, lis.port, key)
    port = int(first.getsockname()[1])
    if lis.protocol != "TURN-UDP":
        return Group(lis, port, [first] * workers)
    socks = [first]
    try:
        for _ in range(1, workers):
            socks.append(_bind(lis, port, key))
    except OSError:
        for s in socks:
            s.close()
        raise
    for s in socks:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, opt, udp_buffer)
    return Group(lis, port, socks)


def send_sockets(channel: socket.socket, sockets: dict[str, socket.socket]) -> None:
    """Hand a worker these listener sockets (name -> socket) over its descriptor channel
    (`SCM_RIGHTS`): one message, the names pickled, the descriptors attached in order."""
    names = list(sockets)
    socket.send_fds(channel, [pickle.dumps(names)], [sockets[n].fileno() for n in names])


async def receive_sockets(channel: socket.socket) -> dict[str, socket.socket] | None:
    """The listener sockets of one `send_sockets` message (None: the channel closed)."""
    await trio.lowlevel.wait_readable(channel)
    data, fds, flags, _addr = socket.recv_fds(channel, 1 << 16, MAX_HANDED)
    socks = [socket.socket(fileno=fd) for fd in fds]
    if not data or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for s in socks:
            s.close()
        return None
    names: list[str] = pickle.loads(data)
    return dict(zip(names, socks, strict=True))


class Workers:
    """The supervisor's view: sockets held for the workers, their states and reports."""

    def __init__(self, config: Config, stats: TurnStats, health: HealthState,
                 own_addresses: Iterable[tuple[str, int]]) -> None:
        self.config = config
        self.count = config.turn.workers
        self.stats = stats
        self.health = health
        self.own_addresses = frozenset(own_addresses)
        self.groups: dict[str, Group] = {}  # the listeners in force, by name
        # removed listeners, held until no worker serves them any more (see `reconfigure`)
        self.retiring: dict[str, Group] = {}
        self.reports: dict[int, TurnStats] = {}
        self.retired = TurnStats()  # counters of workers that are gone
        self.status = {i: WorkerStatus(i) for i in range(self.count)}
        self.processes: dict[int, trio.Process] = {}
        self.quota = SharedQuota.create(self.count)
        self.nonce_key = os.urandom(32)
        self.stopping = False
        self.draining = False
        self.drained: set[int] = set()  # workers whose drain is over
        # worker index -> messages for its stdin (reload, drain), from its start on
        self.inboxes: dict[int, trio.MemorySendChannel[bytes]] = {}
        # worker index -> the supervisor's end of its descriptor channel
        self.channels: dict[int, socket.socket] = {}
        # worker index -> the listeners it serves (draining ones included), as it reports
        self.serving: dict[int, set[str]] = {}

    @property
    def bound_ports(self) -> dict[str, int]:
        """Listener name -> bound port, for the listeners in force."""
        return {name: g.port for name, g in self.groups.items()}

    # -- reload and drain, as Gateway's --------------------------------------------------------

    def reconfigure(self, config: Config) -> list[str]:
        """Apply a reloaded config in every worker; what changed, for the log.

        Listeners are matched by name, as `Gateway.reconfigure` does.  The supervisor binds
        what is new (an added listener, or one whose protocol, address or port changed)
        before anything changes: a bind error (or an unreadable TLS certificate) raises and
        the old config stays, in every worker.  Then each worker gets its sockets of the
        listeners in force over its descriptor channel and its share of the config on its
        stdin; its gateway serves the new ones with the sockets handed (it never binds a
        listener itself), closes re-bound ones and drains removed ones.

        A removed listener's sockets stay open here until no worker serves it any more: a
        TURN-UDP group that lost a member would re-hash the clients of the workers still
        draining theirs (docs/workers.md), and a listener back before its drain ended
        keeps its sockets."""
        new = {lis.name: lis for lis in config.listeners}
        for lis in config.listeners:
            if lis.protocol == "TURN-TLS":
                tls_context(lis.cert, lis.key)  # readable, or the reload is refused
        opened: dict[str, Group] = {}
        try:
            for i, lis in enumerate(config.listeners):
                g = self.groups.get(lis.name)
                if g is not None and same_binding(g.lis, g.port, lis):
                    continue
                r = self.retiring.get(lis.name)
                if g is None and r is not None and same_binding(r.lis, r.port, lis):
                    continue  # back before it drained
                key = f"listeners[{i}]"
                self._check_free(lis, key)
                opened[lis.name] = bind_group(lis, self.count,
                                              config.turn.udp_receive_buffer, key)
        except BaseException:
            for g in opened.values():
                g.close()
            raise
        # Nothing can fail from here on.
        changes: list[str] = []
        for name in list(self.groups):
            if name not in new:
                self.retiring[name] = self.groups.pop(name)
                changes.append(f"listener {name}: removed, draining in the workers")
        for name, lis in new.items():
            if name in opened:
                old = self.groups.pop(name, None) or self.retiring.pop(name, None)
                if old is not None:
                    old.close()  # each worker closes its own copy as it re-binds
                    changes.append(f"listener {name}: re-bound")
                g = self.groups[name] = opened[name]
                changes.append(f"listener {name}: {lis.protocol} on "
                               f"{_hostport(lis.address, g.port)}")
            elif name not in self.groups:
                self.groups[name] = self.retiring.pop(name)
                changes.append(f"listener {name}: back, no longer draining")
            self.groups[name].lis = lis
        turn = attrs.evolve(config.turn, workers=self.count)
        self.config = attrs.evolve(config, turn=turn)
        told = 0
        for index, inbox in list(self.inboxes.items()):
            try:
                send_sockets(self.channels[index], self._sockets(index))
            except OSError as exc:  # gone: it restarts with the new config
                log.warning("reload: TURN worker %d not reached: %s", index, exc)
                continue
            inbox.send_nowait(frame("config", worker_config(self.config, index, self.count)))
            told += 1
        changes.append(f"{told} TURN worker(s) reloaded")
        self._release_retired()
        return changes

    def _check_free(self, lis: ListenerConfig, key: str) -> None:
        """A TURN-UDP port the supervisor holds already (a listener still draining, say) is
        in use, as it is for the single process: `SO_REUSEPORT` would let the new sockets
        join that group."""
        if lis.protocol != "TURN-UDP" or not lis.port:
            return
        for g in (*self.groups.values(), *self.retiring.values()):
            if (g.lis.protocol, g.lis.address, g.port) == (lis.protocol, lis.address, lis.port):
                raise OSError(errno.EADDRINUSE, f"{key}.port (listener {lis.name}): cannot "
                              f"bind {lis.address}:{lis.port}/udp: Address already in use")

    def _release_retired(self) -> None:
        """Close the removed listeners no worker serves any more."""
        for name in list(self.retiring):
            if not any(name in names for names in self.serving.values()):
                self.retiring.pop(name).close()
                log.info("listener %s: closed in every TURN worker", name)

    def _sockets(self, index: int) -> dict[str, socket.socket]:
        """Worker `index`'s sockets of the listeners in force."""
        return {name: g.socks[index] for name, g in self.groups.items()}

    def drain(self) -> None:
        """Every worker refuses new allocations and exits once its last one ended."""
        self.draining = True
        grace = self.config.shutdown.grace_period
        for inbox in list(self.inboxes.values()):
            inbox.send_nowait(frame("drain", grace))

    @property
    def allocations(self) -> int:
        """Live allocations over the workers, from their last reports; while draining, a
        worker that has not reported its drain over counts as at least one."""
        if self.draining:
            return sum(max(1, st.allocations) for st in self.status.values()
                       if st.up and st.index not in self.drained)
        return sum(st.allocations for st in self.status.values() if st.up)

    def bind(self) -> None:
        try:
            for i, lis in enumerate(self.config.listeners):
                self.groups[lis.name] = bind_group(
                    lis, self.count, self.config.turn.udp_receive_buffer, f"listeners[{i}]")
        except OSError:
            self.close_sockets()
            raise

    def close_sockets(self) -> None:
        for g in (*self.groups.values(), *self.retiring.values()):
            g.close()
        self.groups.clear()
        self.retiring.clear()

    def close(self) -> None:
        self.close_sockets()
        self.quota.close()
        os.close(self.quota.fd)

    def sum_reports(self) -> None:
        """Rebuild the collector's counters: gone workers' counters plus the last report
        of every running one."""
        reset_stats(self.stats)
        add_stats(self.stats, self.retired, gauges=False)
        for rep in self.reports.values():
            add_stats(self.stats, rep)

    def _spec(self, index: int, channel_fd: int) -> WorkerSpec:
        own = set(self.own_addresses)
        for g in self.groups.values():
            own.add((g.lis.address, g.port))
        return WorkerSpec(
            index=index,
            config=worker_config(self.config, index, self.count),
            own_addresses=frozenset(own),
            fds={name: s.fileno() for name, s in self._sockets(index).items()},
            channel_fd=channel_fd,
            quota_fd=self.quota.fd,
            workers=self.count,
            nonce_key=self.nonce_key,
            loglevel=logging.getLogger().getEffectiveLevel(),
        )

    async def run_one(self, index: int, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Worker `index`, restarted whenever it exits, until cancelled."""
        st = self.status[index]
        first = True
        while True:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            mine.setblocking(False)
            inbox, outbox = trio.open_memory_channel[bytes](64)
            spec = self._spec(index, theirs.fileno())
            # From here on reloads and a drain reach it: queued until it reads them, so
            # none falls between its spec and its first read.
            self.inboxes[index] = inbox
            self.channels[index] = mine
            self.serving[index] = set(spec.fds)
            if self.draining:  # a drain began while it started
                inbox.send_nowait(frame("drain", self.config.shutdown.grace_period))
            got_ready = False
            proc: trio.Process | None = None
            try:
                try:
                    proc = await trio.lowlevel.open_process(
                        [sys.executable, "-m", "relay.net.worker"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        pass_fds=[*spec.fds.values(), spec.quota_fd, spec.channel_fd])
                finally:
                    theirs.close()
                self.processes[index] = proc
                st.pid = proc.pid
                st.since = time.time()
                assert proc.stdin is not None and proc.stdout is not None
                await proc.stdin.send_all(frame("spec", spec))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_forward, outbox, proc.stdin)
                    async for kind, body in _frames(proc.stdout):
                        if kind == "ready":
                            got_ready = True
                            st.up = True
                            if first:
                                first = False
                                task_status.started()
                        elif kind == "drained":
                            if self.draining:
                                self.drained.add(index)
                            else:  # SIGTERM sent to the worker alone: stop, then restart
                                await proc.stdin.aclose()
                        elif kind == "listeners":
                            self.serving[index] = set(body)
                            self._release_retired()
                        elif kind == "stats":
                            self.reports[index] = body
                            st.allocations = body.allocations_active
                            st.packets = sum(ls.traffic.rx_packets
                                             for ls in body.listeners.values())
                            self.sum_reports()
                    code = await proc.wait()
                    nursery.cancel_scope.cancel()
            finally:
                st.up = False
                self.inboxes.pop(index, None)
                self.channels.pop(index, None)
                mine.close()
                with trio.CancelScope(shield=True):
                    if proc is not None and proc.returncode is None:
                        await _stop(proc)
                    self.serving.pop(index, None)
                    self._release_retired()
                    last = self.reports.pop(index, None)
                    if last is not None:
                        add_stats(self.retired, last, gauges=False)
                    self.quota.clear_row(index)
                    st.allocations = 0
                    self.sum_reports()
                    if proc is not None and index in self.drained:
                        log.info("TURN worker %d (pid %d) drained, exited with code %s",
                                 index, proc.pid, proc.returncode)
            if first and not got_ready:
                raise RuntimeError(f"TURN worker {index} exited with code {code} at start")
            if self.draining:
                log.info("TURN worker %d (pid %d) exited with code %s while draining",
                         index, proc.pid, code)
                return
            st.restarts += 1
            log.warning("TURN worker %d (pid %d) exited with code %s; restarting",
                        index, proc.pid, code)
            await trio.sleep(RESTART_DELAY)


async def _forward(outbox: trio.MemoryReceiveChannel[bytes],
                   stdin: trio.abc.SendStream) -> None:
    """A worker's messages onto its stdin, in order."""
    async for data in outbox:
        try:
            await stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def _stop(proc: trio.Process) -> None:
    """Stop a worker at once: its stdin closes (SIGTERM would drain it); SIGKILL if it
    has not gone after `STOP_TIMEOUT`."""
    if proc.stdin is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.stdin.aclose()
    with trio.move_on_after(STOP_TIMEOUT):
        await proc.wait()
        return
    proc.kill()
    await proc.wait()


async def _frames(stream: trio.abc.ReceiveStream) -> Any:
    """(kind, body) messages a worker writes: 4-byte length, then a pickle."""
    buf = bytearray()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
        while len(buf) >= 4:
            (n,) = _len.unpack_from(buf)
            if len(buf) < 4 + n:
                break
            msg = pickle.loads(bytes(buf[4 : 4 + n]))
            del buf[: 4 + n]
            yield msg


def frame(kind: str, body: Any) -> bytes:
    data = pickle.dumps((kind, body))
    return _len.pack(len(data)) + data


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_workers(
    config: Config,
    stats: TurnStats,
    health: HealthState,
    own_addresses: Iterable[tuple[str, int]] = (),
    *,
    task_status: trio.TaskStatus[Workers] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind the listeners, start `turn.workers` workers and keep them running until
    cancelled; `task_status.started(workers)` once every worker serves."""
    w = Workers(config, stats, health, own_addresses)
    health.workers = w.status
    try:
        w.bind()
        async with trio.open_nursery() as nursery:
            with trio.fail_after(START_TIMEOUT):
                for i in range(w.count):
                    await nursery.start(w.run_one, i)
            task_status.started(w)
    finally:
        w.stopping = True
        w.close()
