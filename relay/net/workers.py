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
- its share of the 401 limit (`ceil(limit / workers)` per source IP and second), so the
  server as a whole never answers more than `turn.unauthorized_ratelimit`.

It reports its counters (`TurnStats`, pickled) on its stdout every `REPORT_INTERVAL`; the
supervisor sums the last reports into the `TurnStats` the collector reads, so `/metrics`
shows the same names and values as one process would (a gone worker's counters are kept,
its gauges dropped).  A worker that exits is logged and restarted after `RESTART_DELAY`;
while it is down `/ready` fails and `/status` shows it.  Closing the supervisor sends
SIGTERM to every worker and waits `STOP_TIMEOUT` before SIGKILL; a worker whose stdin
closes (the supervisor died) stops too.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import signal
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
from relay.net.shared_quota import SharedQuota
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
    lo, hi = port_slices(config.turn.min_port, config.turn.max_port, workers)[index]
    limit = config.turn.unauthorized_ratelimit
    turn = attrs.evolve(
        config.turn, min_port=lo, max_port=hi, workers=1,
        unauthorized_ratelimit=math.ceil(limit / workers) if limit else 0)
    return attrs.evolve(config, turn=turn, signaling=None)


def _bind_udp(lis: ListenerConfig, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in lis.address else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((lis.address, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"listener {lis.name}: cannot bind {lis.address}:{port}: "
                      f"{exc.strerror}") from None
    return sock


def _bind_stream(lis: ListenerConfig) -> socket.socket:
    fam = socket.AF_INET6 if ":" in lis.address else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((lis.address, lis.port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"listener {lis.name}: cannot bind {lis.address}:{lis.port}"
                      f"/tcp: {exc.strerror}") from None
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

    def bind(self) -> None:
        for lis in self.config.listeners:
            if lis.protocol == "TURN-UDP":
                first = _bind_udp(lis, lis.port)
                port = first.getsockname()[1]
                self.sockets[0][lis.name] = first
                for i in range(1, self.count):
                    self.sockets[i][lis.name] = _bind_udp(lis, port)
                for i in range(self.count):
                    s = self.sockets[i][lis.name]
                    try:
                        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                            s.setsockopt(socket.SOL_SOCKET, opt,
                                         self.config.turn.udp_receive_buffer)
                    except OSError:
                        pass
            else:
                shared = _bind_stream(lis)
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
            try:
                assert proc.stdin is not None and proc.stdout is not None
                await proc.stdin.send_all(frame("spec", spec))
                got_ready = False
                async for kind, body in _frames(proc.stdout):
                    if kind == "ready":
                        got_ready = True
                        st.up = True
                        if first:
                            first = False
                            task_status.started()
                    elif kind == "stats":
                        self.reports[index] = body
                        st.allocations = body.allocations_active
                        st.packets = sum(ls.traffic.rx_packets for ls in body.listeners.values())
                        self.sum_reports()
                code = await proc.wait()
            finally:
                st.up = False
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:
                        await _stop(proc)
                    last = self.reports.pop(index, None)
                    if last is not None:
                        add_stats(self.retired, last, gauges=False)
                    self.quota.clear_row(index)
                    st.allocations = 0
                    self.sum_reports()
            if first and not got_ready:
                raise RuntimeError(f"TURN worker {index} exited with code {code} at start")
            st.restarts += 1
            log.warning("TURN worker %d (pid %d) exited with code %s; restarting",
                        index, proc.pid, code)
            await trio.sleep(RESTART_DELAY)


async def _stop(proc: trio.Process) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return
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
