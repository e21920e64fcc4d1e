"""turn_load: relay load through a TURN server to a UDP echo peer and measure it.

N clients each Allocate and then either ChannelBind (``--mode channel``: ChannelData) or
CreatePermission (``--mode send``: Send indications out, Data indications back) towards a UDP
echo peer. Then they send packets of ``--size`` bytes at a total offered ``--rate`` (packets/s,
0 = as fast as possible) for ``--duration`` seconds. Each packet carries its send time, so the
echo gives a round-trip time through the relay, both ways.

Reported: offered and delivered packets/s, Mbit/s of payload, loss %, RTT p50/p90/p99/max,
allocation setup time, and the server's CPU use when ``--server-pid`` is given.

The data path uses the same technique as relay: after setup, plain non-blocking stdlib
sockets; one receive task waits on an epoll set with ``trio.lowlevel.wait_readable`` and
drains every ready socket until ``BlockingIOError``. ``--workers`` spreads the clients over
processes so the generator is not the bottleneck.

Example::

    python -m benchmarks.turn_load --server 127.0.0.1:3478 -u user -p pass \\
        --clients 20 --mode channel --size 100 --rate 20000 --duration 10 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import socket
import struct
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.report import (
    CpuMeter,
    Progress,
    RttRecorder,
    check_loopback,
    conditions,
    ms,
    parse_hostport,
    summarize,
    write_json,
)
from benchmarks.turnclient import MISMATCH_RETRIES, TurnClient, TurnError

MAGIC = 0x52454C59  # "RELY": marks our payloads
# payload: magic (4) | send time (8, perf_counter) | filler
PAYLOAD_HEADER = struct.Struct("!Id")
MIN_SIZE = PAYLOAD_HEADER.size
FIRST_CHANNEL = 0x4000
DATA_ATTR = 0x0013
YIELD_EVERY = 256
MAX_DURATION = 240.0  # stays below the 300 s permission lifetime: no refresh needed
MAX_CLIENTS = 5000
PROGRESS_SLOTS = 3  # sent, received, setup_done per worker


@dataclass
class LoadConfig:
    server: tuple[str, int] = ("127.0.0.1", 3478)
    username: str = "user"
    password: str = "pass"
    clients: int = 10
    mode: str = "channel"  # "channel" | "send"
    size: int = 100
    rate: float = 0.0  # total offered packets/s; 0 = as fast as possible
    duration: float = 5.0
    workers: int = 1
    peer: tuple[str, int] | None = None  # None: start our own echo peer
    peer_workers: int = 1
    server_pid: int | None = None
    setup_concurrency: int = 32
    setup_timeout: float = 60.0
    drain: float = 0.5
    integrity: str = "sha1"
    progress: bool = True
    label: str = ""


@dataclass
class LoadResult:
    config: dict[str, Any]
    clients_ok: int = 0
    setup_failures: int = 0
    setup_errors: list[str] = field(default_factory=list)
    setup_p50_ms: float = float("nan")
    setup_max_ms: float = float("nan")
    duration: float = 0.0
    sent: int = 0
    received: int = 0
    send_errors: int = 0
    offered_pps: float = 0.0
    delivered_pps: float = 0.0
    delivered_mbps: float = 0.0
    loss_pct: float = 0.0
    rtt_p50_ms: float = float("nan")
    rtt_p90_ms: float = float("nan")
    rtt_p99_ms: float = float("nan")
    rtt_max_ms: float = float("nan")
    server_cpu_pct: float | None = None
    conditions: dict[str, Any] = field(default_factory=dict)

    def summary_line(self) -> str:
        c = self.config
        cpu = f" server_cpu={self.server_cpu_pct:.0f}%" if self.server_cpu_pct is not None else ""
        target = f"{c['rate']:.0f}" if c["rate"] else "max"
        return (
            f"turn_load{(' ' + c['label']) if c.get('label') else ''}: mode={c['mode']} "
            f"clients={self.clients_ok}/{c['clients']} size={c['size']}B rate={target} "
            f"T={self.duration:.1f}s workers={c['workers']} | offered={self.offered_pps:.0f} "
            f"delivered={self.delivered_pps:.0f} pkt/s ({self.delivered_mbps:.1f} Mbit/s) "
            f"loss={self.loss_pct:.2f}% rtt p50/p90/p99/max={self.rtt_p50_ms:.3f}/"
            f"{self.rtt_p90_ms:.3f}/{self.rtt_p99_ms:.3f}/{self.rtt_max_ms:.3f} ms "
            f"setup p50/max={self.setup_p50_ms:.1f}/{self.setup_max_ms:.1f} ms{cpu}"
        )


# ---------------------------------------------------------------------------------------
# worker process


def _build_frame(mode: str, client: TurnClient, channel: int, peer: tuple[str, int],
                 size: int) -> tuple[bytearray, int]:
    """The datagram one client sends, and the offset of its payload (for the timestamp)."""
    payload = bytes(size)
    if mode == "channel":
        frame = bytearray(struct.pack("!HH", channel, size) + payload)
        return frame, 4
    frame = bytearray(client.send_indication_bytes(peer, payload))
    off = _data_offset(frame, len(frame))
    if off < 0:
        raise RuntimeError("could not locate DATA in our own Send indication")
    return frame, off


def _data_offset(buf: bytearray | bytes, n: int) -> int:
    """Offset of the DATA attribute's value in a STUN message, or -1."""
    pos = 20
    while pos + 4 <= n:
        atype, alen = struct.unpack_from("!HH", buf, pos)
        if atype == DATA_ATTR:
            return pos + 4 if pos + 4 + alen <= n else -1
        pos += 4 + ((alen + 3) & ~3)
    return -1


async def _setup_client(cfg: LoadConfig, client: TurnClient, peer: tuple[str, int],
                        channel: int) -> float:
    t0 = time.perf_counter()
    # A 437 means the server still holds an allocation on our port (a recently deleted
    # one of an earlier run whose port the kernel reused): move to a new port.
    await client.allocate(timeout=10.0, new_port_on_mismatch=MISMATCH_RETRIES)
    if cfg.mode == "channel":
        await client.channel_bind(channel, peer, timeout=10.0)
    else:
        await client.create_permission(peer, timeout=10.0)
    return time.perf_counter() - t0


class _WorkerState:
    __slots__ = ("errors", "received", "rtt", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.rtt = RttRecorder()


async def _sender(cfg: LoadConfig, rate: float, socks: list[socket.socket],
                  frames: list[bytearray], offsets: list[int], st: _WorkerState,
                  t_end: float) -> None:
    n = len(socks)
    sends = [s.send for s in socks]
    pack_into = PAYLOAD_HEADER.pack_into
    clock = time.perf_counter
    checkpoint = trio.lowlevel.checkpoint
    i = 0
    t0 = clock()
    while True:
        now = clock()
        if now >= t_end:
            return
        if rate > 0:
            due = int((now - t0) * rate) - st.sent
            if due <= 0:
                # Sleep until the next packet is due (trio rounds to its timer granularity).
                await trio.sleep(max(0.0, (st.sent + 1) / rate - (now - t0)))
                continue
            burst = min(due, 4096)
        else:
            burst = YIELD_EVERY
        for _ in range(burst):
            frame = frames[i]
            pack_into(frame, offsets[i], MAGIC, clock())
            try:
                sends[i](frame)
                st.sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                st.errors += 1
            except OSError:
                st.errors += 1
            i += 1
            if i == n:
                i = 0
        await checkpoint()


async def _receiver(cfg: LoadConfig, socks: list[socket.socket], st: _WorkerState) -> None:
    ep = select.epoll()
    try:
        by_fd = {s.fileno(): s for s in socks}
        for fd in by_fd:
            ep.register(fd, select.EPOLLIN)
        buf = bytearray(65536)
        unpack_from = PAYLOAD_HEADER.unpack_from
        clock = time.perf_counter
        add = st.rtt.add
        channel_mode = cfg.mode == "channel"
        data_off: dict[int, int] = {}
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        while True:
            await wait_readable(ep.fileno())
            budget = YIELD_EVERY
            for fd, _ev in ep.poll(0):
                recv_into = by_fd[fd].recv_into
                while True:
                    try:
                        n = recv_into(buf)
                    except BlockingIOError:
                        break
                    except OSError:
                        st.errors += 1
                        continue
                    if channel_mode:
                        if n < 4 + MIN_SIZE or (buf[0] & 0xF0) != 0x40:
                            continue
                        off = 4
                    else:
                        off = data_off.get(fd, -1)
                        if off < 0 or off > n - MIN_SIZE or buf[off - 4] != 0 \
                                or buf[off - 3] != DATA_ATTR:
                            if n < 20 or buf[0] != 0x00 or buf[1] != 0x17:  # Data indication
                                continue
                            off = _data_offset(buf, n)
                            if off < 0 or off > n - MIN_SIZE:
                                continue
                            data_off[fd] = off
                    magic, ts = unpack_from(buf, off)
                    if magic != MAGIC:
                        continue
                    st.received += 1
                    add(clock() - ts)
                    budget -= 1
                    if budget <= 0:
                        budget = YIELD_EVERY
                        await checkpoint()
    finally:
        ep.close()


async def _publish(st: _WorkerState, shared: Any, base: int) -> None:
    while True:
        shared[base] = st.sent
        shared[base + 1] = st.received
        await trio.sleep(0.1)


async def _worker_async(cfg: LoadConfig, index: int, nclients: int, first_client: int,
                        conn: multiprocessing.connection.Connection, shared: Any,
                        start: Any) -> None:
    assert cfg.peer is not None
    peer = cfg.peer
    base = index * PROGRESS_SLOTS
    setup_times: list[float] = []
    errors: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        clients: list[TurnClient] = []
        for _ in range(nclients):
            c = TurnClient(cfg.server, cfg.username, cfg.password, integrity=cfg.integrity,
                           rto=0.25)
            await stack.enter_async_context(c)
            clients.append(c)
        ok: list[tuple[TurnClient, int]] = []
        limiter = trio.CapacityLimiter(max(1, cfg.setup_concurrency))

        async def setup_one(k: int, c: TurnClient) -> None:
            channel = FIRST_CHANNEL + ((first_client + k) % 0x1000)
            async with limiter:
                try:
                    setup_times.append(await _setup_client(cfg, c, peer, channel))
                    ok.append((c, channel))
                except (TurnError, trio.TooSlowError, OSError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                shared[base + 2] = len(ok) + len(errors)

        with trio.move_on_after(cfg.setup_timeout):
            async with trio.open_nursery() as nursery:
                for k, c in enumerate(clients):
                    nursery.start_soon(setup_one, k, c)
        conn.send(("ready", setup_times, errors))
        go = await trio.to_thread.run_sync(functools.partial(start.wait, cfg.setup_timeout + 30))
        if not go:
            return
        st = _WorkerState()
        socks: list[socket.socket] = []
        frames: list[bytearray] = []
        offsets: list[int] = []
        for c, channel in ok:
            s = c.stdlib_socket()
            s.connect(cfg.server)
            stack.callback(s.close)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, opt, 1 << 22)
            frame, off = _build_frame(cfg.mode, c, channel, peer, cfg.size)
            socks.append(s)
            frames.append(frame)
            offsets.append(off)
        rate = cfg.rate * len(ok) / cfg.clients if cfg.rate > 0 else 0.0
        t_start = time.perf_counter()
        t_end = t_start + cfg.duration
        if socks:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_publish, st, shared, base)
                nursery.start_soon(_receiver, cfg, socks, st)
                await _sender(cfg, rate, socks, frames, offsets, st, t_end)
                await trio.sleep(cfg.drain)
                nursery.cancel_scope.cancel()
        shared[base] = st.sent
        shared[base + 1] = st.received
        elapsed = min(time.perf_counter() - t_start, cfg.duration + cfg.drain)
        conn.send(("done", st.sent, st.received, st.errors, st.rtt.count, st.rtt.max,
                   st.rtt.stride, st.rtt.samples.tobytes(), elapsed))
        # Release the allocations (best effort, bounded).
        with trio.move_on_after(3.0):
            async with trio.open_nursery() as nursery:
                for c, _ch in ok:
                    nursery.start_soon(_delete_quietly, c)


async def _delete_quietly(client: TurnClient) -> None:
    with contextlib.suppress(TurnError, trio.TooSlowError, OSError):
        await client.refresh(0, timeout=1.0)


def _worker_entry(cfg: LoadConfig, index: int, nclients: int, first_client: int,
                  conn: multiprocessing.connection.Connection, shared: Any, start: Any) -> None:
    try:
        trio.run(_worker_async, cfg, index, nclients, first_client, conn, shared, start)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _peer_entry(host: str, port: int, ready: Any) -> None:
    async def main() -> None:
        await trio.lowlevel.checkpoint()
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve_udp_echo, host, port, reuse_port=True))
            ready.set()

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)


# ---------------------------------------------------------------------------------------
# driver


def _free_port(host: str) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def echo_peers(host: str, workers: int = 1, timeout: float = 10.0) -> Any:
    """Run ``workers`` echo peer processes sharing one port on host; yields (host, port)."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port(host)
    procs = []
    try:
        for _ in range(workers):
            ready = ctx.Event()
            p = ctx.Process(target=_peer_entry, args=(host, port, ready), daemon=True)
            p.start()
            procs.append(p)
            if not ready.wait(timeout):
                raise RuntimeError("echo peer did not start")
        yield (host, port)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(5)


def run_load(cfg: LoadConfig) -> LoadResult:
    """Run one load test (blocking; spawns worker processes) and return its figures."""
    if cfg.peer is None:
        host = "::1" if ":" in cfg.server[0] else "127.0.0.1"
        with echo_peers(host, cfg.peer_workers) as peer:
            return run_load(_replace(cfg, peer=peer))
    if cfg.size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} bytes")
    workers = max(1, min(cfg.workers, cfg.clients))
    ctx = multiprocessing.get_context("spawn")
    shared = ctx.Array("q", workers * PROGRESS_SLOTS, lock=False)
    start = ctx.Event()
    procs = []
    conns = []
    per = [cfg.clients // workers + (1 if i < cfg.clients % workers else 0)
           for i in range(workers)]
    first = 0
    progress = Progress(cfg.progress)
    result = LoadResult(config=asdict(cfg), conditions=conditions())
    result.config["workers"] = workers
    completed = False
    try:
        for i in range(workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_entry,
                            args=(cfg, i, per[i], first, child, shared, start), daemon=True)
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
            first += per[i]
        # Setup phase.
        setup: list[float] = []
        deadline = time.monotonic() + cfg.setup_timeout + 30
        for i, c in enumerate(conns):
            while not c.poll(0.2):
                if time.monotonic() > deadline or not procs[i].is_alive():
                    raise RuntimeError(f"worker {i} did not finish setup")
                done = sum(shared[j * PROGRESS_SLOTS + 2] for j in range(workers))
                progress.update(f"setup: {done}/{cfg.clients} clients")
            msg = c.recv()
            if msg[0] == "error":
                raise RuntimeError(f"worker {i}: {msg[1]}")
            setup.extend(msg[1])
            result.setup_errors.extend(msg[2])
        result.clients_ok = len(setup)
        result.setup_failures = len(result.setup_errors)
        if setup:
            s = summarize(setup)
            result.setup_p50_ms = s["p50"] * 1000
            result.setup_max_ms = s["max"] * 1000
        cpu = CpuMeter(cfg.server_pid)
        cpu.start()
        start.set()
        t0 = time.monotonic()
        last_t, last_recv = t0, 0
        finished: dict[int, tuple[Any, ...]] = {}
        stop_at = t0 + cfg.duration + cfg.drain + 30
        while len(finished) < workers and time.monotonic() < stop_at:
            for i, c in enumerate(conns):
                if i not in finished and c.poll(0):
                    msg = c.recv()
                    if msg[0] == "error":
                        raise RuntimeError(f"worker {i}: {msg[1]}")
                    finished[i] = msg
                    if len(finished) == workers:
                        cpu.stop()
            now = time.monotonic()
            sent = sum(shared[j * PROGRESS_SLOTS] for j in range(workers))
            recv = sum(shared[j * PROGRESS_SLOTS + 1] for j in range(workers))
            if now - last_t >= 0.5:
                rate_now = (recv - last_recv) / (now - last_t)
                loss = 100.0 * (sent - recv) / sent if sent else 0.0
                progress.update(f"[{now - t0:5.1f}s] sent {sent} recv {recv} "
                                f"now {rate_now:.0f} pkt/s loss so far {loss:.2f}%")
                last_t, last_recv = now, recv
            time.sleep(0.05)
        progress.done()
        if len(finished) < workers:
            raise RuntimeError("workers did not report results in time")
        if cpu.percent is None:
            cpu.stop()
        result.server_cpu_pct = cpu.percent
        samples = array("d")
        rtt_max = 0.0
        elapsed = []
        for msg in finished.values():
            _tag, sent, recv, errs, _count, mx, stride, raw, el = msg
            result.sent += sent
            result.received += recv
            result.send_errors += errs
            rtt_max = max(rtt_max, mx)
            part = array("d")
            part.frombytes(raw)
            # Reweight thinned samples by repetition so workers weigh by packets.
            samples.extend(part if stride == 1 else _repeat(part, stride))
            elapsed.append(el)
        completed = True
    finally:
        if not completed:
            for p in procs:
                p.terminate()
        start.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(2)
        for c in conns:
            c.close()
    dur = cfg.duration
    result.duration = dur
    result.offered_pps = result.sent / dur
    result.delivered_pps = result.received / dur
    result.delivered_mbps = result.received * cfg.size * 8 / dur / 1e6
    result.loss_pct = 100.0 * max(0, result.sent - result.received) / result.sent \
        if result.sent else 100.0
    if samples:
        s = summarize(samples)
        result.rtt_p50_ms = s["p50"] * 1000
        result.rtt_p90_ms = s["p90"] * 1000
        result.rtt_p99_ms = s["p99"] * 1000
        result.rtt_max_ms = rtt_max * 1000
    return result


def _repeat(part: array[float], times: int) -> array[float]:
    out = array("d")
    for _ in range(min(times, 64)):
        out.extend(part)
    return out


def _replace(cfg: LoadConfig, **changes: Any) -> LoadConfig:
    d = asdict(cfg)
    d.update(changes)
    return LoadConfig(**d)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.turn_load",
        description="Relay UDP load through a TURN server to an echo peer; report rate, "
                    "loss, RTT, setup time and server CPU.",
    )
    p.add_argument("--server", default="127.0.0.1:3478",
                   help="TURN server UDP address, HOST:PORT or [V6]:PORT (default "
                        "127.0.0.1:3478)")
    p.add_argument("-u", "--username", default="user")
    p.add_argument("-p", "--password", default="pass")
    p.add_argument("-n", "--clients", type=int, default=10, help="allocations (default 10)")
    p.add_argument("-m", "--mode", choices=("channel", "send"), default="channel",
                   help="ChannelData (default) or Send/Data indications")
    p.add_argument("-s", "--size", type=int, default=100,
                   help=f"payload bytes per packet, >= {MIN_SIZE} (default 100)")
    p.add_argument("-r", "--rate", type=float, default=1000.0,
                   help="total offered packets/s over all clients; 0 = as fast as possible "
                        "(default 1000)")
    p.add_argument("-t", "--duration", type=float, default=5.0,
                   help=f"seconds of load, <= {MAX_DURATION:.0f} (default 5)")
    p.add_argument("-w", "--workers", type=int, default=1,
                   help="generator processes (default 1)")
    p.add_argument("--peer", default=None,
                   help="an existing UDP echo peer HOST:PORT (default: start our own on "
                        "loopback)")
    p.add_argument("--peer-workers", type=int, default=1,
                   help="echo peer processes when we start it (default 1)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="pid of the server process, to report its CPU use (psutil)")
    p.add_argument("--integrity", choices=("sha1", "sha256"), default="sha1",
                   help="MESSAGE-INTEGRITY flavour of our requests (default sha1)")
    p.add_argument("--setup-concurrency", type=int, default=32,
                   help="allocations set up in parallel per worker (default 32)")
    p.add_argument("--drain", type=float, default=0.5,
                   help="seconds to wait for in-flight packets after sending (default 0.5)")
    p.add_argument("--allow-remote-target", action="store_true",
                   help="allow a non-loopback server/peer (only a server you may load)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    return p


def config_from_args(args: argparse.Namespace, p: argparse.ArgumentParser) -> LoadConfig:
    host, port = parse_hostport(args.server, 3478)
    host = check_loopback(host, "--server", args.allow_remote_target)
    peer = None
    if args.peer:
        ph, pp = parse_hostport(args.peer, 3480)
        peer = (check_loopback(ph, "--peer", args.allow_remote_target), pp)
    if not 1 <= args.clients <= MAX_CLIENTS:
        p.error(f"--clients must be 1..{MAX_CLIENTS}")
    if not MIN_SIZE <= args.size <= 65000:
        p.error(f"--size must be {MIN_SIZE}..65000")
    if not (args.rate >= 0 and math.isfinite(args.rate)):
        p.error("--rate must be >= 0")
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:.0f}]")
    if not 1 <= args.workers <= 64 or not 1 <= args.peer_workers <= 64:
        p.error("--workers and --peer-workers must be 1..64")
    if not 0 <= args.drain <= 10:
        p.error("--drain must be 0..10")
    if not 0 < port <= 65535:
        p.error("server port must be 1..65535")
    return LoadConfig(
        server=(host, port), username=args.username, password=args.password,
        clients=args.clients, mode=args.mode, size=args.size, rate=args.rate,
        duration=args.duration, workers=args.workers, peer=peer,
        peer_workers=args.peer_workers, server_pid=args.server_pid,
        setup_concurrency=max(1, args.setup_concurrency), drain=args.drain,
        integrity=args.integrity, progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    cfg = config_from_args(args, p)
    try:
        result = run_load(cfg)
    except (RuntimeError, OSError) as exc:
        print(f"turn_load: error: {exc}", file=sys.stderr)
        return 1
    if result.setup_errors:
        print(f"turn_load: {result.setup_failures} client(s) failed setup, first: "
              f"{result.setup_errors[0]}", file=sys.stderr)
    print(result.summary_line())
    if args.json:
        write_json(args.json, asdict(result))
    return 0 if result.clients_ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

__all__ = ["LoadConfig", "LoadResult", "echo_peers", "main", "ms", "run_load"]
