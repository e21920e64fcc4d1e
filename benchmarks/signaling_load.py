"""Load benchmark for the signaling server, side by side with nextcloud-spreed-signaling.

What upstream's benchmark client does, in Python on trio-websocket: N sessions say hello
(v1, to the mock Nextcloud of `benchmarks.mock_nextcloud` started here, in `allowall` mode
with a shared secret), then send
`message`s with recipient `session` to random other sessions, payload `{"now": <RFC3339>}`
(plus a monotonic timestamp for the latency). Two load phases per run:

- fixed: a fixed offered rate (`--rate` messages/s in all) — latency p50/p99 and the
  server's CPU time per 1000 messages at equal work;
- max: `--senders` tasks sending back to back with at most `--window` messages in flight —
  delivered messages/s (on a 2-core machine the Python load generator itself may be the
  limit; the server's and the load generator's CPU shares say so).

Memory per session = (server RSS after all hellos - RSS before) / N.

Servers: `relay` (this repository's signaling server, started in a subprocess running only
`serve_signaling`) and `spreed` (the `nextcloud-spreed-signaling-server` binary, if
installed; Debian ships 0.4.1). Runs alternate A B A B (`--rounds`).

    python -m benchmarks.signaling_load --sessions 1000,10000 --duration 10 --rounds 2
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
import trio
import trio_websocket

from benchmarks.mock_nextcloud import MockNextcloud
from benchmarks.servers import stop_process

SECRET = "bench-secret"
BACKEND_PATH = "ocs/v2.php/apps/spreed/api/v1/signaling/backend"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- servers under test ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_relay(port: int, tmp: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.signaling_load", "--serve-relay", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_spreed(port: int, tmp: str) -> subprocess.Popen[bytes]:
    conf = os.path.join(tmp, "server.conf")
    with open(conf, "w") as f:
        f.write(f"""[http]
listen = 127.0.0.1:{port}
[app]
debug = false
[sessions]
hashkey = {"h" * 32}
blockkey = {"b" * 32}
[clients]
internalsecret = {"i" * 32}
[backend]
allowall = true
secret = {SECRET}
timeout = 10
connectionsperhost = 8
[nats]
url = :loopback:
[mcu]
[stats]
allowed_ips = 127.0.0.1
""")
    binary = shutil.which("nextcloud-spreed-signaling-server")
    assert binary is not None
    return subprocess.Popen([binary, "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def spreed_version() -> str:
    binary = shutil.which("nextcloud-spreed-signaling-server")
    if binary is None:
        return ""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown version"


async def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await s.aclose()
            return
        except OSError:
            await trio.sleep(0.05)
    raise RuntimeError("server did not start")


# --- load --------------------------------------------------------------------------------


class Peer:
    __slots__ = ("session_id", "ws")

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.session_id = ""


class Counters:
    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.latencies: list[float] = []  # ms
        self.recording = False
        self.window: trio.Semaphore | None = None  # messages in flight (max phase)


async def receiver(peer: Peer, c: Counters) -> None:
    try:
        while True:
            raw = await peer.ws.get_message()
            msg = json.loads(raw)
            t = msg.get("type")
            if t == "message":
                c.received += 1
                if c.window is not None:
                    c.window.release()
                if c.recording:
                    sent_ns = msg["message"]["data"].get("t", 0)
                    c.latencies.append((time.monotonic_ns() - sent_ns) / 1e6)
            elif t in ("error", "bye"):
                c.errors += 1
    except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
        return


async def connect_peer(nursery: trio.Nursery, url: str, nc_url: str, i: int,
                       c: Counters) -> Peer:
    ws = await trio_websocket.connect_websocket_url(nursery, url, message_queue_size=4096)
    peer = Peer(ws)
    await ws.send_message(json.dumps({"id": "1", "type": "hello", "hello": {
        "version": "1.0", "auth": {"url": nc_url, "params": {"userid": f"user-{i}"}}}}))
    while True:
        msg = json.loads(await ws.get_message())
        if msg.get("type") == "hello":
            peer.session_id = msg["hello"]["sessionid"]
            break
        if msg.get("type") in ("error", "bye"):
            raise RuntimeError(f"hello failed: {msg}")
    nursery.start_soon(receiver, peer, c)
    return peer


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


async def send_one(peers: list[Peer], c: Counters, rng: random.Random) -> None:
    src, dst = rng.sample(peers, 2)
    data = {"now": now_rfc3339(), "t": time.monotonic_ns()}
    await src.ws.send_message(json.dumps({"type": "message", "message": {
        "recipient": {"type": "session", "sessionid": dst.session_id}, "data": data}}))
    c.sent += 1


async def fixed_rate(peers: list[Peer], c: Counters, rate: int, duration: float) -> None:
    rng = random.Random(1)
    tick = 0.01
    per_tick = rate * tick
    owed = 0.0
    end = trio.current_time() + duration
    nxt = trio.current_time()
    while trio.current_time() < end:
        owed += per_tick
        while owed >= 1:
            owed -= 1
            await send_one(peers, c, rng)
        nxt += tick
        await trio.sleep_until(nxt)


async def max_rate(peers: list[Peer], c: Counters, senders: int, window: int,
                   duration: float) -> None:
    """Senders back to back, with at most `window` messages in flight.

    Without the window a saturated load generator measures its own receive backlog
    rather than the server.
    """
    c.window = trio.Semaphore(window)

    async def sender(seed: int) -> None:
        rng = random.Random(seed)
        assert c.window is not None
        while True:
            await c.window.acquire()
            await send_one(peers, c, rng)

    with trio.move_on_after(duration):
        async with trio.open_nursery() as n:
            for i in range(senders):
                n.start_soon(sender, i)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


async def run_one(kind: str, n: int, args: argparse.Namespace, nc: MockNextcloud,
                  tmp: str) -> dict[str, Any]:
    port = free_port()
    proc = (start_relay if kind == "relay" else start_spreed)(port, tmp)
    ps = psutil.Process(proc.pid)
    result: dict[str, Any] = {"server": kind, "sessions": n}
    try:
        await wait_port(port, proc)
        await trio.sleep(0.5)
        rss0 = ps.memory_info().rss
        url = f"ws://127.0.0.1:{port}/spreed"
        nc_url = f"http://127.0.0.1:{nc.port}/{BACKEND_PATH}"
        c = Counters()
        async with trio.open_nursery() as nursery:
            peers: list[Peer] = []
            limit = trio.Semaphore(args.connect_concurrency)
            t0 = time.monotonic()

            async def one(i: int) -> None:
                async with limit:
                    peers.append(await connect_peer(nursery, url, nc_url, i, c))

            async with trio.open_nursery() as cn:
                for i in range(n):
                    cn.start_soon(one, i)
            result["connect_s"] = time.monotonic() - t0
            await trio.sleep(1.0)
            result["rss_per_session_kib"] = (ps.memory_info().rss - rss0) / n / 1024
            result["rss_mib"] = ps.memory_info().rss / 2**20

            for phase in ("fixed", "max"):
                c.latencies = []
                c.recording = True
                sent0, recv0 = c.sent, c.received
                cpu0 = sum(ps.cpu_times()[:2])
                me0 = sum(psutil.Process().cpu_times()[:2])
                t0 = time.monotonic()
                if phase == "fixed":
                    await fixed_rate(peers, c, args.rate, args.duration)
                else:
                    await max_rate(peers, c, args.senders, args.window, args.duration)
                await trio.sleep(0.5)  # let in-flight messages land
                c.window = None
                wall = time.monotonic() - t0
                cpu = sum(ps.cpu_times()[:2]) - cpu0
                me = sum(psutil.Process().cpu_times()[:2]) - me0
                recv = c.received - recv0
                sent = c.sent - sent0
                result[phase] = {
                    "sent": sent,
                    "received": recv,
                    "msgs_per_s": recv / (wall - 0.5),
                    "p50_ms": pct(c.latencies, 0.5),
                    "p99_ms": pct(c.latencies, 0.99),
                    "server_cpu_pct": 100 * cpu / wall,
                    "loadgen_cpu_pct": 100 * me / wall,
                    "server_cpu_ms_per_1k": 1000 * cpu / max(recv, 1) * 1000,
                }
                c.recording = False
            result["errors"] = c.errors
            for p in peers:
                nursery.start_soon(p.ws.aclose)
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    finally:
        stop_process(proc)
    return result


def fmt(r: dict[str, Any]) -> str:
    f, m = r["fixed"], r["max"]
    return (f"{r['server']:>6} n={r['sessions']:>6}  "
            f"mem/session={r['rss_per_session_kib']:6.1f} KiB"
            f"  rss={r['rss_mib']:6.1f} MiB  connect={r['connect_s']:5.1f}s | "
            f"fixed: {f['msgs_per_s']:7.0f} msg/s p50={f['p50_ms']:6.2f}ms "
            f"p99={f['p99_ms']:7.2f}ms cpu={f['server_cpu_pct']:5.1f}% "
            f"({f['server_cpu_ms_per_1k']:5.1f} ms/1k msg) | "
            f"max: {m['msgs_per_s']:7.0f} msg/s p50={m['p50_ms']:6.2f}ms "
            f"p99={m['p99_ms']:7.2f}ms cpu={m['server_cpu_pct']:5.1f}% "
            f"(load generator {m['loadgen_cpu_pct']:3.0f}%) | errors={r['errors']}")


async def bench(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = [s for s in args.servers.split(",") if s]
    if "spreed" in servers and shutil.which("nextcloud-spreed-signaling-server") is None:
        print("nextcloud-spreed-signaling-server not installed: relay only")
        servers = [s for s in servers if s != "spreed"]
    sizes = [int(x) for x in args.sessions.split(",")]
    print("== signaling load benchmark")
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"trio {trio.__version__}; load generator and servers share the machine (loopback)")
    print(f"spreed: {spreed_version() or 'not installed'}")
    print(f"sizes={sizes} rate={args.rate}/s duration={args.duration}s senders={args.senders} "
          f"window={args.window} "
          f"rounds={args.rounds} order={'/'.join(servers)} (alternating)")
    nc = MockNextcloud(SECRET.encode(), record=False)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, nc.handle, 0, host="127.0.0.1"))
            nc.port = listeners[0].socket.getsockname()[1]
            for n in sizes:
                for rnd in range(args.rounds):
                    for kind in servers:
                        r = await run_one(kind, n, args, nc, tmp)
                        r["round"] = rnd
                        results.append(r)
                        print(fmt(r), flush=True)
            nursery.cancel_scope.cancel()
    print("== summary (median over rounds)")
    for n in sizes:
        med: dict[str, dict[str, float]] = {}
        for kind in servers:
            rs = [r for r in results if r["server"] == kind and r["sessions"] == n]
            med[kind] = {
                "mem": statistics.median(r["rss_per_session_kib"] for r in rs),
                "fixed_p50": statistics.median(r["fixed"]["p50_ms"] for r in rs),
                "fixed_p99": statistics.median(r["fixed"]["p99_ms"] for r in rs),
                "cpu_per_1k": statistics.median(r["fixed"]["server_cpu_ms_per_1k"] for r in rs),
                "max_rate": statistics.median(r["max"]["msgs_per_s"] for r in rs),
                "max_cpu": statistics.median(r["max"]["server_cpu_pct"] for r in rs),
            }
            m = med[kind]
            print(f"n={n:>6} {kind:>6}: mem/session {m['mem']:.1f} KiB, fixed p50 "
                  f"{m['fixed_p50']:.2f} ms p99 {m['fixed_p99']:.2f} ms, server CPU "
                  f"{m['cpu_per_1k']:.1f} ms per 1k msgs, max {m['max_rate']:.0f} msg/s "
                  f"(server CPU {m['max_cpu']:.0f}%)")
        if "relay" in med and "spreed" in med:
            a, b = med["relay"], med["spreed"]
            print(f"n={n:>6} ratio relay/spreed: mem {a['mem'] / b['mem']:.2f}x, "
                  f"CPU per msg {a['cpu_per_1k'] / b['cpu_per_1k']:.2f}x, "
                  f"p50 {a['fixed_p50'] / b['fixed_p50']:.2f}x, "
                  f"p99 {a['fixed_p99'] / b['fixed_p99']:.2f}x, "
                  f"max rate {a['max_rate'] / b['max_rate']:.2f}x")
    if args.json:
        await trio.Path(args.json).write_text(json.dumps(results, indent=1))


def serve_relay(port: int) -> None:
    """The server side of a `relay` run: only the signaling server, allowall mode."""
    from relay.config import Config
    from relay.runtime import Runtime
    from relay.signaling.server import serve_signaling

    cfg = Config.from_mapping({"version": "v1", "auth": {"type": "none"}, "signaling": {
        "http": {"listen": f"127.0.0.1:{port}"},
        "backend": {"allowall": True, "secret": SECRET}}})
    try:
        trio.run(serve_signaling, Runtime(cfg))
    except KeyboardInterrupt:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="1000,10000")
    ap.add_argument("--rate", type=int, default=1000, help="fixed phase: messages/s in all")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--senders", type=int, default=32, help="max phase: concurrent senders")
    ap.add_argument("--window", type=int, default=256,
                    help="max phase: messages in flight at most")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--servers", default="relay,spreed")
    ap.add_argument("--connect-concurrency", type=int, default=100)
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument("--serve-relay", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_relay:
        import signal

        signal.signal(signal.SIGTERM, signal.default_int_handler)
        serve_relay(args.serve_relay)
        return
    trio.run(bench, args)


if __name__ == "__main__":
    main()
