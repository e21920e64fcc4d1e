"""turn_alloc: allocation churn rate and memory per idle allocation of a TURN server.

Churn: C concurrent clients loop for T seconds; every cycle opens a fresh UDP socket (a new
5-tuple), then Allocate (with the 401 challenge, as a new client would), ChannelBind to a
peer, Refresh, and Refresh(LIFETIME=0) to delete. Reported in allocations/s (full cycles/s)
with cycle latency percentiles.

Memory: hold 1k and then 10k idle allocations (cumulative) and report the server's RSS
growth per allocation from a baseline taken before the first one (needs ``--server-pid``).

Examples::

    python -m benchmarks.turn_alloc --server 127.0.0.1:3478 --concurrency 16 --duration 10
    python -m benchmarks.turn_alloc --server 127.0.0.1:3478 --memory 1000,10000 \\
        --server-pid 1234 --churn 0
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from benchmarks.report import (
    CpuMeter,
    Progress,
    RttRecorder,
    check_loopback,
    conditions,
    parse_hostport,
    raise_nofile,
    rss_bytes,
    summarize,
    write_json,
)
from benchmarks.turnclient import MISMATCH_RETRIES, TurnClient, TurnError

MAX_HOLD = 30000
MAX_DURATION = 600.0
PEER = ("127.0.0.1", 9)  # the discard port: permissions/channels need no live peer
PEER6 = ("::1", 9)


@dataclass
class AllocConfig:
    server: tuple[str, int] = ("127.0.0.1", 3478)
    username: str = "user"
    password: str = "pass"
    concurrency: int = 16
    duration: float = 5.0  # churn seconds; 0 = no churn test
    max_cycles: int = 10_000_000
    workers: int = 1
    memory: tuple[int, ...] = ()  # cumulative idle allocation counts, e.g. (1000, 10000)
    server_pid: int | None = None
    settle: float = 1.0  # seconds to wait before reading RSS
    progress: bool = True
    label: str = ""


@dataclass
class AllocResult:
    config: dict[str, Any]
    churn_cycles: int = 0
    churn_errors: int = 0
    churn_error_samples: list[str] = field(default_factory=list)
    churn_seconds: float = 0.0
    churn_rate: float = 0.0  # full cycles (allocations) per second
    cycle_p50_ms: float = float("nan")
    cycle_p99_ms: float = float("nan")
    churn_server_cpu_pct: float | None = None
    memory: list[dict[str, float]] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)

    def summary_line(self) -> str:
        parts = [f"turn_alloc{(' ' + self.config['label']) if self.config.get('label') else ''}:"]
        if self.config["duration"] > 0:
            parts.append(
                f"churn {self.churn_rate:.0f} alloc/s ({self.churn_cycles} cycles in "
                f"{self.churn_seconds:.1f}s, C={self.config['concurrency']}, "
                f"W={self.config['workers']}, errors={self.churn_errors}) cycle p50/p99="
                f"{self.cycle_p50_ms:.2f}/{self.cycle_p99_ms:.2f} ms"
                + (f" server_cpu={self.churn_server_cpu_pct:.0f}%"
                   if self.churn_server_cpu_pct is not None else ""))
        for m in self.memory:
            parts.append(f"| {int(m['allocations'])} idle: {m['bytes_per_allocation'] / 1024:.2f}"
                         f" KiB/alloc (RSS +{m['rss_delta'] / 1e6:.1f} MB)")
        return " ".join(parts)


# ---------------------------------------------------------------------------------------
# worker


# A deleted allocation's client socket stays open this long, so the kernel does not hand
# its port (its 5-tuple) to a later allocation while the server may still hold the old one
# (coturn frees deleted allocations on a ~1 s timer and answers "437 Mismatched allocation:
# wrong transaction ID" meanwhile).  The graveyard belongs to the worker, not to one phase:
# the memory phase right after churn must not get the ports churn has just deleted.
LINGER = 5.0


def _bury(graveyard: deque[tuple[float, TurnClient]], c: TurnClient) -> None:
    now = time.monotonic()
    graveyard.append((now, c))
    while graveyard and now - graveyard[0][0] > LINGER:
        graveyard.popleft()[1].close()


async def _cycle(cfg: AllocConfig, peer: tuple[str, int], channel: int,
                 graveyard: deque[tuple[float, TurnClient]]) -> None:
    c = TurnClient(cfg.server, cfg.username, cfg.password, rto=0.25)
    await c.__aenter__()
    try:
        await c.allocate(timeout=5.0, new_port_on_mismatch=MISMATCH_RETRIES)
        await c.channel_bind(channel, peer, timeout=5.0)
        await c.refresh(timeout=5.0)
        await c.refresh(0, timeout=5.0)
    finally:
        _bury(graveyard, c)


async def _churn(cfg: AllocConfig, duration: float, concurrency: int, max_cycles: int,
                 shared: Any, slot: int, graveyard: deque[tuple[float, TurnClient]]
                 ) -> tuple[int, int, list[str], float, bytes]:
    peer = PEER6 if ":" in cfg.server[0] else PEER
    done = 0
    errors = 0
    samples: list[str] = []
    lat = RttRecorder()
    t0 = time.perf_counter()
    deadline = t0 + duration
    started = 0

    async def loop(k: int) -> None:
        nonlocal done, errors, started
        channel = 0x4000 + k % 0x1000
        while time.perf_counter() < deadline and started < max_cycles:
            started += 1
            t = time.perf_counter()
            try:
                await _cycle(cfg, peer, channel, graveyard)
                done += 1
                lat.add(time.perf_counter() - t)
            except (TurnError, trio.TooSlowError, OSError) as exc:
                errors += 1
                if len(samples) < 5:
                    samples.append(f"{type(exc).__name__}: {exc}")
            shared[slot] = done

    with trio.move_on_after(duration + 10):
        async with trio.open_nursery() as nursery:
            for k in range(concurrency):
                nursery.start_soon(loop, k)
    elapsed = time.perf_counter() - t0
    return done, errors, samples, elapsed, lat.samples.tobytes()


async def _hold(cfg: AllocConfig, count: int, held: list[TurnClient],
                stack: contextlib.AsyncExitStack, shared: Any, slot: int) -> tuple[int, list[str]]:
    errors: list[str] = []
    limiter = trio.CapacityLimiter(64)
    ok = 0

    async def one() -> None:
        nonlocal ok
        async with limiter:
            c = TurnClient(cfg.server, cfg.username, cfg.password, rto=0.25)
            await stack.enter_async_context(c)
            try:
                await c.allocate(timeout=10.0, new_port_on_mismatch=MISMATCH_RETRIES)
                held.append(c)
                ok += 1
                shared[slot] = len(held)
            except (TurnError, trio.TooSlowError, OSError) as exc:
                c.close()
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")

    with trio.move_on_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    return ok, errors


async def _release(held: list[TurnClient], graveyard: deque[tuple[float, TurnClient]]) -> None:
    limiter = trio.CapacityLimiter(64)

    async def one(c: TurnClient) -> None:
        async with limiter:
            with contextlib.suppress(TurnError, trio.TooSlowError, OSError):
                await c.refresh(0, timeout=2.0)
            _bury(graveyard, c)

    with trio.move_on_after(60):
        async with trio.open_nursery() as nursery:
            for c in held:
                nursery.start_soon(one, c)
    held.clear()


async def _worker_async(cfg: AllocConfig, conn: multiprocessing.connection.Connection,
                        shared: Any, slot: int) -> None:
    held: list[TurnClient] = []
    graveyard: deque[tuple[float, TurnClient]] = deque()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lambda: [c.close() for _t, c in graveyard])
        while True:
            cmd = await trio.to_thread.run_sync(conn.recv)
            if cmd[0] == "churn":
                conn.send(("churn", *await _churn(cfg, cmd[1], cmd[2], cmd[3], shared, slot,
                                                  graveyard)))
            elif cmd[0] == "hold":
                conn.send(("hold", *await _hold(cfg, cmd[1], held, stack, shared, slot)))
            elif cmd[0] == "release":
                await _release(held, graveyard)
                conn.send(("release",))
            else:
                return


def _worker_entry(cfg: AllocConfig, conn: multiprocessing.connection.Connection, shared: Any,
                  slot: int) -> None:
    raise_nofile()
    try:
        trio.run(_worker_async, cfg, conn, shared, slot)
    except (KeyboardInterrupt, EOFError):
        pass
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# driver


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _gather(conns: list[multiprocessing.connection.Connection], procs: list[Any],
            shared: Any, timeout: float, progress: Progress, label: str) -> list[tuple[Any, ...]]:
    out: dict[int, tuple[Any, ...]] = {}
    t0 = time.monotonic()
    while len(out) < len(conns):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{label}: workers did not answer within {timeout:.0f} s")
        for i, c in enumerate(conns):
            if i in out:
                continue
            if c.poll(0):
                msg = c.recv()
                if msg[0] == "error":
                    raise RuntimeError(f"worker {i}: {msg[1]}")
                out[i] = msg
            elif not procs[i].is_alive():
                raise RuntimeError(f"worker {i} died")
        el = time.monotonic() - t0
        n = sum(shared[:])
        rate = f" ({n / el:.0f}/s)" if el > 0 else ""
        progress.update(f"[{el:5.1f}s] {label}: {n}{rate}")
        time.sleep(0.05)
    progress.done()
    return [out[i] for i in range(len(conns))]


def run_alloc(cfg: AllocConfig) -> AllocResult:
    """Run the churn and/or memory benchmark (blocking; spawns worker processes)."""
    ctx = multiprocessing.get_context("spawn")
    workers = max(1, cfg.workers)
    shared = ctx.Array("q", workers, lock=False)
    procs = []
    conns = []
    result = AllocResult(config=asdict(cfg), conditions=conditions())
    progress = Progress(cfg.progress)
    try:
        for i in range(workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_entry, args=(cfg, child, shared, i), daemon=True)
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        if cfg.duration > 0:
            conc = _split(cfg.concurrency, workers)
            caps = _split(cfg.max_cycles, workers)
            cpu = CpuMeter(cfg.server_pid)
            cpu.start()
            for i, c in enumerate(conns):
                shared[i] = 0
                c.send(("churn", cfg.duration, max(1, conc[i]), caps[i]))
            res = _gather(conns, procs, shared, cfg.duration + 60, progress, "churn cycles")
            result.churn_server_cpu_pct = cpu.stop()
            lat: list[float] = []
            from array import array

            for msg in res:
                _t, done, errs, samples, elapsed, raw = msg
                result.churn_cycles += done
                result.churn_errors += errs
                result.churn_error_samples.extend(samples)
                result.churn_seconds = max(result.churn_seconds, elapsed)
                part = array("d")
                part.frombytes(raw)
                lat.extend(part)
            if result.churn_seconds > 0:
                result.churn_rate = result.churn_cycles / result.churn_seconds
            if lat:
                s = summarize(lat)
                result.cycle_p50_ms = s["p50"] * 1000
                result.cycle_p99_ms = s["p99"] * 1000
        if cfg.memory:
            if cfg.server_pid is None:
                raise RuntimeError("--memory needs --server-pid")
            time.sleep(cfg.settle)
            base = rss_bytes(cfg.server_pid)
            have = 0
            for target in sorted(cfg.memory):
                extra = target - have
                for i in range(workers):
                    shared[i] = 0
                for c, k in zip(conns, _split(extra, workers), strict=True):
                    c.send(("hold", k))
                res = _gather(conns, procs, shared, 240, progress,
                              f"idle allocations towards {target}")
                got = sum(m[1] for m in res)
                errs = [e for m in res for e in m[2]]
                have += got
                time.sleep(cfg.settle)
                rss = rss_bytes(cfg.server_pid)
                result.memory.append({
                    "allocations": float(have), "target": float(target),
                    "rss_base": float(base), "rss": float(rss),
                    "rss_delta": float(rss - base),
                    "bytes_per_allocation": (rss - base) / have if have else float("nan"),
                    "failed": float(extra - got),
                })
                if errs:
                    print(f"turn_alloc: {extra - got} allocation(s) failed, first: {errs[0]}",
                          file=sys.stderr)
                if got < extra:
                    break
            for c in conns:
                c.send(("release",))
            _gather(conns, procs, shared, 120, Progress(False), "release")
    finally:
        for c in conns:
            with contextlib.suppress(OSError):
                c.send(("exit",))
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(2)
        for c in conns:
            c.close()
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.turn_alloc",
        description="Allocation churn (allocate, bind, refresh, delete) in allocations/s and "
                    "server memory per idle allocation.",
    )
    p.add_argument("--server", default="127.0.0.1:3478", help="TURN server HOST:PORT")
    p.add_argument("-u", "--username", default="user")
    p.add_argument("-p", "--password", default="pass")
    p.add_argument("-c", "--concurrency", type=int, default=16,
                   help="concurrent churning clients (default 16)")
    p.add_argument("-t", "--duration", type=float, default=5.0,
                   help="seconds of churn; 0 skips the churn test (default 5)")
    p.add_argument("--max-cycles", type=int, default=10_000_000,
                   help="stop churn after this many cycles (default 10M)")
    p.add_argument("-w", "--workers", type=int, default=1, help="generator processes")
    p.add_argument("--memory", default="",
                   help="comma-separated cumulative idle allocation counts, e.g. 1000,10000 "
                        "(needs --server-pid)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="server pid (for its CPU use during churn and its RSS)")
    p.add_argument("--allow-remote-target", action="store_true",
                   help="allow a non-loopback server (only a server you may load)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    host, port = parse_hostport(args.server, 3478)
    host = check_loopback(host, "--server", args.allow_remote_target)
    try:
        memory = tuple(int(x) for x in args.memory.split(",") if x.strip())
    except ValueError:
        p.error("--memory must be comma-separated integers, e.g. 1000,10000")
    if any(not 1 <= m <= MAX_HOLD for m in memory):
        p.error(f"--memory counts must be 1..{MAX_HOLD}")
    if memory and args.server_pid is None:
        p.error("--memory needs --server-pid")
    if not 0 <= args.duration <= MAX_DURATION:
        p.error(f"--duration must be 0..{MAX_DURATION:.0f}")
    if not 1 <= args.concurrency <= 4096 or not 1 <= args.workers <= 64:
        p.error("--concurrency must be 1..4096 and --workers 1..64")
    if args.max_cycles < 1:
        p.error("--max-cycles must be >= 1")
    if not 0 < port <= 65535:
        p.error("server port must be 1..65535")
    cfg = AllocConfig(server=(host, port), username=args.username, password=args.password,
                      concurrency=args.concurrency, duration=args.duration,
                      max_cycles=args.max_cycles, workers=args.workers, memory=memory,
                      server_pid=args.server_pid, progress=not args.quiet)
    try:
        result = run_alloc(cfg)
    except (RuntimeError, OSError) as exc:
        print(f"turn_alloc: error: {exc}", file=sys.stderr)
        return 1
    if result.churn_error_samples:
        print(f"turn_alloc: {result.churn_errors} churn error(s), first: "
              f"{result.churn_error_samples[0]}", file=sys.stderr)
    print(result.summary_line())
    if args.json:
        write_json(args.json, asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
