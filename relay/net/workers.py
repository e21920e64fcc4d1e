"""TURN on every core: worker processes sharing the listener ports (`turn.workers` > 1).

The supervisor (in the main process, beside the admin app and signaling) binds, per
TURN-UDP listener, one `SO_REUSEPORT` socket per worker and keeps every one of them open
for its whole life, handing worker *i* its socket *i*.  The kernel picks a group member by a
hash of the client's 4-tuple; since the group never changes, neither does a client's worker,
also while another worker is down or after it restarts (docs/workers.md has the
measurements).  A TURN-TCP/TLS listener is one listening socket shared by every worker: a
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
The listener sockets are the supervisor's, bound at start: a reload that adds, removes or
re-binds a listener applies that at the next restart (it says so); everything else
(credentials, routes, clusters, quotas, TLS certificates, ...) applies live.
Stopping closes each worker's stdin (it stops at once) and waits `STOP_TIMEOUT` before
SIGKILL; a worker whose stdin closes because the supervisor died stops too.
"""

from __future__ import annotations

import contextlib
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
_len = struct.Struct("!I")


@attrs.frozen
class WorkerSpec:
    """What a worker gets on its stdin (pickled) before it starts."""

    index: int
    config: Config  # its own: port slice, 401 share, workers=1
    own_addresses: frozenset[tuple[str, int]]
    fds: dict[str, int]  # listener name -> inherited socket descriptor
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


def _bind(lis: ListenerConfig, port: int) -> socket.socket:
    """A listener's socket for the workers: TURN-UDP, one member of the `SO_REUSEPORT`
    group on `port`; TURN-TCP/TLS, the one listening socket they all accept from."""
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
        raise OSError(exc.errno, f"listener {lis.name}: cannot bind {lis.address}:{port}"
                      f"/{'udp' if udp else 'tcp'}: {exc.strerror}") from None
    return sock


class Workers:
    """The supervisor's view: sockets held for the workers, their states and reports."""

    def __init__(self, config: Config, stats: TurnStats, health: HealthState,
                 own_addresses: Iterable[tuple[str, int]]) -> None:
        self.config = config
        self.count = config.turn.workers
        self.stats = stats
        self.health = health
        self.own_addresses = frozenset(own_addresses)
        self.bound_ports: dict[str, int] = {}
        self.sockets: list[dict[str, socket.socket]] = [{} for _ in range(self.count)]
        self.reports: dict[int, TurnStats] = {}
        self.retired = TurnStats()  # counters of workers that are gone
        self.status = {i: WorkerStatus(i) for i in range(self.count)}
        self.processes: dict[int, trio.Process] = {}
        self.quota = SharedQuota.create(self.count)
        self.nonce_key = os.urandom(32)
        self.stopping = False
        self.draining = False
        self.drained: set[int] = set()  # workers whose drain is over
        # worker index -> messages for its stdin (reload, drain), while it runs
        self.inboxes: dict[int, trio.MemorySendChannel[bytes]] = {}
        self.started_listeners = {lis.name: lis for lis in config.listeners}

    # -- reload and drain, as Gateway's --------------------------------------------------------

    def reconfigure(self, config: Config) -> list[str]:
        """Send each worker its share of a reloaded config; what changed, for the log.
        Listener sockets stay as bound at start (see the module docstring)."""
        changes: list[str] = []
        later: list[str] = []
        listeners = []
        new = {lis.name: lis for lis in config.listeners}
        for name, old in self.started_listeners.items():
            lis = new.get(name)
            if lis is None:
                later.append(f"listener {name} removed")
                listeners.append(self._current(name))
            elif not same_binding(old, self.bound_ports[name], lis):
                later.append(f"listener {name} re-bound")
                listeners.append(self._current(name))
            else:
                if lis.protocol == "TURN-TLS":
                    tls_context(lis.cert, lis.key)  # readable, or the reload is refused
                listeners.append(lis)
        later += [f"listener {name} added" for name in new if name not in self.started_listeners]
        if later:
            log.warning("reload: with turn.workers > 1, %s take(s) effect at the next restart",
                        ", ".join(later))
        turn = attrs.evolve(config.turn, workers=self.count)
        self.config = attrs.evolve(config, turn=turn, listeners=tuple(listeners))
        for index, inbox in list(self.inboxes.items()):
            inbox.send_nowait(frame("config", worker_config(self.config, index, self.count)))
        changes.append(f"{len(self.inboxes)} TURN worker(s) reloaded")
        return changes

    def _current(self, name: str) -> ListenerConfig:
        for lis in self.config.listeners:
            if lis.name == name:
                return lis
        return self.started_listeners[name]

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
        for lis in self.config.listeners:
            if lis.protocol == "TURN-UDP":
                first = _bind(lis, lis.port)
                port = first.getsockname()[1]
                self.sockets[0][lis.name] = first
                for i in range(1, self.count):
                    self.sockets[i][lis.name] = _bind(lis, port)
                for i in range(self.count):
                    s = self.sockets[i][lis.name]
                    try:
                        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                            s.setsockopt(socket.SOL_SOCKET, opt,
                                         self.config.turn.udp_receive_buffer)
                    except OSError:
                        pass
            else:
                shared = _bind(lis, lis.port)
                port = shared.getsockname()[1]
                for i in range(self.count):
                    self.sockets[i][lis.name] = shared
            self.bound_ports[lis.name] = port

    def close(self) -> None:
        seen: set[int] = set()
        for group in self.sockets:
            for s in group.values():
                if id(s) not in seen:
                    seen.add(id(s))
                    s.close()
        self.quota.close()
        os.close(self.quota.fd)

    def sum_reports(self) -> None:
        """Rebuild the collector's counters: gone workers' counters plus the last report
        of every running one."""
        reset_stats(self.stats)
        add_stats(self.stats, self.retired, gauges=False)
        for rep in self.reports.values():
            add_stats(self.stats, rep)

    def _spec(self, index: int) -> WorkerSpec:
        own = set(self.own_addresses)
        for lis in self.config.listeners:
            own.add((lis.address, self.bound_ports[lis.name]))
        return WorkerSpec(
            index=index,
            config=worker_config(self.config, index, self.count),
            own_addresses=frozenset(own),
            fds={name: s.fileno() for name, s in self.sockets[index].items()},
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
            spec = self._spec(index)
            pass_fds = [*spec.fds.values(), spec.quota_fd]
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "relay.net.worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=pass_fds)
            self.processes[index] = proc
            st.pid = proc.pid
            st.since = time.time()
            got_ready = False
            inbox, outbox = trio.open_memory_channel[bytes](64)
            try:
                assert proc.stdin is not None and proc.stdout is not None
                await proc.stdin.send_all(frame("spec", spec))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_forward, outbox, proc.stdin)
                    async for kind, body in _frames(proc.stdout):
                        if kind == "ready":
                            got_ready = True
                            st.up = True
                            self.inboxes[index] = inbox
                            if self.draining:  # a drain began while it started
                                inbox.send_nowait(
                                    frame("drain", self.config.shutdown.grace_period))
                            if first:
                                first = False
                                task_status.started()
                        elif kind == "drained":
                            if self.draining:
                                self.drained.add(index)
                            else:  # SIGTERM sent to the worker alone: stop, then restart
                                await proc.stdin.aclose()
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
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:
                        await _stop(proc)
                    last = self.reports.pop(index, None)
                    if last is not None:
                        add_stats(self.retired, last, gauges=False)
                    self.quota.clear_row(index)
                    st.allocations = 0
                    self.sum_reports()
                    if index in self.drained:
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
