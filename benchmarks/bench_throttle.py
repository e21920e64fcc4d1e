"""Signaling in production: what throttling and GeoIP cost, and whether a throttled client
slows anyone else.

Run from the repository root:  python -m benchmarks.bench_throttle [--hellos 300]

1. Micro (timeit, best and median of `--repeat` rounds, per call): the throttler's check on
   a clean client (added to every resume, internal hello and room-API request), a check of a
   blocked client, a recorded failure, a GeoIP lookup (database written here with
   mmdb-writer when installed), and a `/turn/credentials` answer.
2. Isolation: relay's signaling server in a subprocess (`allowall`, mock Nextcloud in this
   process), `--hellos` clients one after the other connect, say hello and close; hello
   latency p50/p99 in three phases: no attack; "delayed": 9 connections each sent one bad
   resume id and wait for the answer the server delays by 100 ms … 25.6 s (the sleeps run
   while the hellos are measured); "flood": `--attackers` connections resume with random
   ids back to back, all refused at once with `too_many_requests` (the client is blocked),
   which costs CPU like any request flood on a 2-core machine where the load generator
   runs too. Everything runs on loopback.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable

import trio
import trio_websocket

from benchmarks.mock_nextcloud import MockNextcloud
from benchmarks.signaling_load import SECRET, free_port, start_relay, wait_port
from relay.config.signaling import TurnRestConfig
from relay.signaling import turn_credentials
from relay.signaling.geoip import GeoIP
from relay.signaling.throttle import HELLO_RESUME, Throttler


def _time(name: str, fn: Callable[[], object], number: int, repeat: int) -> None:
    rounds = timeit.repeat(fn, number=number, repeat=repeat)
    per = [r / number * 1e9 for r in rounds]
    print(f"  {name:<44} best {min(per):8.0f} ns   median {statistics.median(per):8.0f} ns")


def micro(repeat: int) -> None:
    print("-- micro (per call)")
    clean = Throttler()
    _time("throttle check, clean client", lambda: clean.check("192.0.2.1", HELLO_RESUME, 1.0),
          100_000, repeat)
    blocked = Throttler()
    for _ in range(10):
        blocked.failed("192.0.2.9", HELLO_RESUME, 0.0)
    _time("throttle check, blocked client", lambda: blocked.check(
        "192.0.2.9", HELLO_RESUME, 1.0), 100_000, repeat)
    _time("throttle check, IPv6 client (/64 key)", lambda: clean.check(
        "2001:db8::1", HELLO_RESUME, 1.0), 100_000, repeat)
    many = Throttler()
    _time("throttle failure recorded", lambda: many.failed("192.0.2.5", HELLO_RESUME, 1.0),
          20_000, repeat)
    overrides = ((ipaddress.ip_network("10.0.0.0/8"), "DE"),)
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet
    except ImportError:
        print("  (mmdb-writer not installed: GeoIP database lookups skipped)")
        geo = GeoIP(overrides)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "c.mmdb")
            w = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
            for i in range(1, 200):
                w.insert_network(IPSet([f"{i}.0.0.0/8"]), {"country": {"iso_code": "GB"}})
            w.to_db_file(path)
            geo = GeoIP(overrides, path)
    _time("GeoIP lookup (199 networks, in memory)", lambda: geo.lookup("81.2.69.142"),
          20_000, repeat)
    _time("GeoIP lookup hitting an override", lambda: geo.lookup("10.1.2.3"), 20_000, repeat)
    cfg = TurnRestConfig("key", b"secret", ("turn:192.0.2.1:3478",))
    _time("/turn/credentials answer", lambda: turn_credentials.handle(
        "service=turn&api=key&username=u", cfg, None, 1.0), 20_000, repeat)


async def hello_latencies(url: str, nc_url: str, count: int) -> list[float]:
    out = []
    for i in range(count):
        start = time.perf_counter()
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.get_message()  # welcome
            await ws.send_message(json.dumps({"id": "1", "type": "hello", "hello": {
                "version": "1.0", "auth": {"url": nc_url, "params": {"userid": f"u{i}"}}}}))
            msg = json.loads(await ws.get_message())
            if msg.get("type") != "hello":
                raise RuntimeError(f"hello failed: {msg}")
        out.append((time.perf_counter() - start) * 1000)
    return out


async def attacker(url: str, counts: dict[str, int]) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.get_message()
        n = 0
        while True:
            n += 1
            await ws.send_message(json.dumps({"id": str(n), "type": "hello", "hello": {
                "version": "1.0", "resumeid": secrets.token_urlsafe(32)}}))
            msg = json.loads(await ws.get_message())
            code = msg.get("error", {}).get("code", msg.get("type"))
            counts[code] = counts.get(code, 0) + 1


async def one_attempt(url: str, counts: dict[str, int]) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.get_message()
        await ws.send_message(json.dumps({"id": "1", "type": "hello", "hello": {
            "version": "1.0", "resumeid": secrets.token_urlsafe(32)}}))
        msg = json.loads(await ws.get_message())
        code = msg.get("error", {}).get("code", msg.get("type"))
        counts[code] = counts.get(code, 0) + 1
        await trio.sleep_forever()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def isolation(args: argparse.Namespace) -> None:
    print(f"-- isolation: {args.hellos} sequential hellos, then again with "
          f"{args.attackers} attacking connections (bad resume ids, back to back)")
    nc = MockNextcloud(SECRET.encode(), record=False)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_relay(port, tmp)
        try:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, nc.handle, 0, host="127.0.0.1"))
                nc.port = listeners[0].socket.getsockname()[1]
                await wait_port(port, proc)
                url = f"ws://127.0.0.1:{port}/spreed"
                with trio.fail_after(600):
                    await hello_latencies(url, nc.url, 20)  # warm up
                    quiet = await hello_latencies(url, nc.url, args.hellos)
                    delayed_counts: dict[str, int] = {}
                    async with trio.open_nursery() as attack:
                        for _ in range(9):
                            attack.start_soon(one_attempt, url, delayed_counts)
                        await trio.sleep(0.05)
                        delayed = await hello_latencies(url, nc.url, args.hellos)
                        attack.cancel_scope.cancel()
                    counts: dict[str, int] = {}
                    async with trio.open_nursery() as attack:
                        for _ in range(args.attackers):
                            attack.start_soon(attacker, url, counts)
                        await trio.sleep(1.0)
                        loud = await hello_latencies(url, nc.url, args.hellos)
                        attack.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            proc.terminate()
            proc.wait(10)
    for name, lat in (("no attack", quiet), ("9 delayed", delayed), ("flood", loud)):
        print(f"  hello latency {name:<10} p50 {pct(lat, 0.5):6.2f} ms   "
              f"p99 {pct(lat, 0.99):6.2f} ms   max {max(lat):6.2f} ms   (n={len(lat)})")
    print(f"  delayed attempts answered while the hellos ran: {delayed_counts}")
    print(f"  flood answers: {dict(sorted(counts.items()))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hellos", type=int, default=300)
    ap.add_argument("--attackers", type=int, default=20)
    ap.add_argument("--no-isolation", action="store_true")
    args = ap.parse_args()
    print("== signaling throttling / GeoIP benchmark")
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, python "
          f"{sys.version.split()[0]}, trio {trio.__version__}")
    micro(args.repeat)
    if not args.no_isolation:
        trio.run(isolation, args)


if __name__ == "__main__":
    main()
