"""How much a Prometheus scrape of relay costs, and that it does not grow with allocations.

Run from the repository root:  python -m benchmarks.bench_scrape [--rounds 7] [--quick]

A scrape runs on relay's event loop, so its duration is how long the media path waits
while Prometheus scrapes.  The collector reads aggregated plain ints (`TurnStats`), never
the allocation table, so its cost depends on the number of listeners, clusters and label
values, not on allocations.  This prints, for several listener/cluster counts, with 0 and
with 10,000 allocations (in the stats: the collector cannot see more than that):

- `turn collect`: the TURN collector alone (building the metric families);
- `scrape`: `generate_latest()` of the whole registry (TURN + process + platform + GC
  collectors), i.e. what one `GET /metrics` computes, and the size of the answer;
- with `--http`: the median round trip of `GET /metrics` over loopback through the admin
  server (hypercorn), from a client in the same process;
- with `--live` (needs the TURN gateway): a real relay process (`python -m relay`), scraped
  over HTTP with 0, then 10,000 allocations held by TURN clients, then 0 again (A B A); and
  the forwarding rate of `benchmarks.turn_load` without and with a client scraping
  `/metrics` as fast as it can, alternated (A B A B).

Cases are interleaved round by round (A B A B) so machine noise hits all of them alike;
the figures are the median and the best round, per scrape.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from relay.config import Config
from relay.health import HealthState
from relay.metrics.collector import TurnCollector, install_collectors
from relay.runtime import Runtime
from relay.turn.stats import AUTH_FAILURE_REASONS, DROP_REASONS, METHODS, TurnStats


def make_config(listeners: int, clusters: int) -> Config:
    raw: dict[str, Any] = {
        "version": "v1",
        "admin": {"metrics_endpoint": "http://127.0.0.1:9/metrics",
                  "healthcheck_endpoint": ""},
        "auth": {"type": "static", "credentials": {"username": "u", "password": "p"}},
        "clusters": [{"name": f"cluster-{c}", "endpoints": [f"10.{c // 256}.{c % 256}.0/24"]}
                     for c in range(clusters)],
        "listeners": [{"name": f"listener-{i}", "address": "127.0.0.1", "port": 20000 + i,
                       "routes": [f"cluster-{i % clusters}"]} for i in range(listeners)],
    }
    return Config.from_mapping(raw)


def make_stats(config: Config, allocations: int) -> TurnStats:
    """Stats as a busy relay would have them: every counter non-zero, every label used."""
    st = TurnStats()
    n_lis = max(1, len(config.listeners))
    for i, lis in enumerate(config.listeners):
        s = st.listener(lis.name)
        share = allocations // n_lis + (1 if i < allocations % n_lis else 0)
        s.connections = share
        s.connections_total = share * 3
        s.traffic.rx_packets = s.traffic.tx_packets = 10**9 + i
        s.traffic.rx_bytes = s.traffic.tx_bytes = 10**11 + i
    for c in config.clusters:
        s = st.cluster(c.name)
        s.connections = allocations
        s.connections_total = allocations * 2
        s.traffic.rx_packets = s.traffic.tx_packets = 10**9
        s.traffic.rx_bytes = s.traffic.tx_bytes = 10**11
    st.allocations_active = allocations
    st.allocations_total = allocations * 3
    st.permissions_active = allocations * 2
    st.channels_active = allocations * 2
    for m in METHODS:
        for r in ("success", "400", "401", "403", "437", "438", "441", "486", "508"):
            st.count_request(m, r)
    for k in AUTH_FAILURE_REASONS:
        st.auth_failures[k] = 5
    for k in DROP_REASONS:
        st.drops[k] = 7
    for v in (5, 50, 500, 5000, 50000):
        st.allocation_lifetime.observe(v)
    for v in (0.0001, 0.001, 0.01):
        st.request_latency.observe(v)
    return st


def time_per_call(fn: Callable[[], object], number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def run_inprocess(rounds: int, number: int, shapes: list[tuple[int, int]],
                  allocs: list[int]) -> None:
    cases: list[tuple[str, Callable[[], object], Callable[[], object], int]] = []
    for lis, clu in shapes:
        cfg = make_config(lis, clu)
        for a in allocs:
            st = make_stats(cfg, a)
            reg = CollectorRegistry(auto_describe=True)
            install_collectors(reg, st, cfg, HealthState())
            turn = TurnCollector(st, cfg, HealthState())
            size = len(generate_latest(reg))
            label = f"{lis:>4} listeners {clu:>4} clusters {a:>6} allocations"
            cases.append((label, lambda t=turn: list(t.collect()),  # type: ignore[misc]
                          lambda r=reg: generate_latest(r), size))  # type: ignore[misc]
    collect_t: dict[str, list[float]] = {c[0]: [] for c in cases}
    scrape_t: dict[str, list[float]] = {c[0]: [] for c in cases}
    for rnd in range(rounds):
        order = cases if rnd % 2 == 0 else list(reversed(cases))  # A B ... B A ...
        for label, collect, scrape, _ in order:
            collect_t[label].append(time_per_call(collect, number))
            scrape_t[label].append(time_per_call(scrape, number))
        print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr)
    print(f"\n{'case':<44} {'turn collect µs':>18} {'scrape µs':>18} {'bytes':>8}")
    print(f"{'':<44} {'median (best)':>18} {'median (best)':>18}")
    for label, _, _, size in cases:
        c, s = collect_t[label], scrape_t[label]
        print(f"{label:<44} {statistics.median(c) * 1e6:>9.0f} ({min(c) * 1e6:>6.0f})"
              f" {statistics.median(s) * 1e6:>9.0f} ({min(s) * 1e6:>6.0f}) {size:>8}")


def run_http(rounds: int, number: int, allocs: list[int]) -> None:
    import attrs
    import httpx
    import trio

    from relay.config import Endpoint
    from relay.metrics.admin import serve_admin

    cfg = make_config(10, 10)
    cfg = attrs.evolve(cfg, admin=attrs.evolve(
        cfg.admin, metrics_endpoint=Endpoint("127.0.0.1", 0, "/metrics"),
        healthcheck_endpoint=None))

    async def main() -> None:
        runtimes = {a: Runtime(cfg, stats=make_stats(cfg, a)) for a in allocs}
        urls: dict[int, str] = {}
        times: dict[int, list[float]] = {a: [] for a in allocs}
        async with trio.open_nursery() as nursery:
            for a, rt in runtimes.items():
                bound = await nursery.start(serve_admin, rt)
                host, port = bound["metrics"]
                urls[a] = f"http://{host}:{port}/metrics"
            async with httpx.AsyncClient(trust_env=False) as client:
                for rnd in range(rounds):
                    order = allocs if rnd % 2 == 0 else list(reversed(allocs))
                    for a in order:
                        samples = []
                        for _ in range(number):
                            t0 = time.perf_counter()
                            r = await client.get(urls[a])
                            samples.append(time.perf_counter() - t0)
                            assert r.status_code == 200
                        times[a].append(statistics.median(samples))
            nursery.cancel_scope.cancel()
        print("\nGET /metrics over loopback (10 listeners, 10 clusters; hypercorn + httpx "
              "in one process), median round trip per round:")
        for a in allocs:
            t = times[a]
            print(f"  {a:>6} allocations: median {statistics.median(t) * 1e6:>7.0f} µs"
                  f"  (best round {min(t) * 1e6:.0f} µs)")

    trio.run(main)


LIVE_CONFIG = """\
version: v1
admin: {{metrics_endpoint: "http://127.0.0.1:{mport}/metrics", healthcheck_endpoint: "",
        loglevel: "all:WARN"}}
auth: {{type: static, realm: bench, credentials: {{username: user, password: pass}}}}
listeners: [{{name: udp, protocol: TURN-UDP, address: "127.0.0.1", port: {port},
             routes: [peers]}}]
clusters: [{{name: peers, type: STATIC, endpoints: ["127.0.0.1/32"]}}]
turn: {{min_port: {lo}, max_port: {hi}, unauthorized_ratelimit: 0, total_quota: 0}}
"""


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_live(rounds: int, number: int, allocations: int, load_seconds: float) -> None:
    import contextlib
    import subprocess
    import tempfile
    import threading

    import httpx
    import trio

    from benchmarks.report import raise_nofile
    from benchmarks.servers import ServerProcess, _spawn, free_udp_port, stop, wait_ready
    from benchmarks.turn_load import LoadConfig, run_load
    from benchmarks.turnclient import MISMATCH_RETRIES, TurnClient

    raise_nofile()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port, mport = free_udp_port(), _free_tcp_port()
    lo, hi = 21400, 32767
    with tempfile.TemporaryDirectory(prefix="relay-bench-scrape-") as tmp:
        cfg = os.path.join(tmp, "relay.yaml")
        with open(cfg, "w") as fh:
            fh.write(LIVE_CONFIG.format(mport=mport, port=port, lo=lo, hi=hi))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        server: ServerProcess = _spawn("relay", [sys.executable, "-m", "relay", "-c", cfg],
                                       ("127.0.0.1", port), tmp, env=env)
        url = f"http://127.0.0.1:{mport}/metrics"
        try:
            wait_ready(server, 20)
            print(f"\nlive relay pid {server.pid}: TURN 127.0.0.1:{port}, metrics {url}")

            async def scrape_times(client: httpx.AsyncClient) -> list[float]:
                out = []
                for _ in range(number):
                    t0 = time.perf_counter()
                    r = await client.get(url)
                    out.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        raise RuntimeError(f"GET /metrics: {r.status_code}")
                return out

            async def active(client: httpx.AsyncClient) -> str:
                r = await client.get(url)
                found = [ln for ln in r.text.splitlines()
                         if ln.startswith("stunner_allocations_active ")]
                return found[0] if found else "stunner_allocations_active ?"

            async def alloc_phase() -> dict[str, list[float]]:
                res: dict[str, list[float]] = {}
                async with httpx.AsyncClient(trust_env=False) as client:
                    res["A 0 allocations"] = await scrape_times(client)
                    held: list[TurnClient] = []
                    async with contextlib.AsyncExitStack() as stack:
                        limiter = trio.CapacityLimiter(64)

                        async def one() -> None:
                            async with limiter:
                                c = TurnClient(("127.0.0.1", port), "user", "pass", rto=0.25)
                                await stack.enter_async_context(c)
                                with contextlib.suppress(Exception):
                                    await c.allocate(
                                        timeout=10.0, new_port_on_mismatch=MISMATCH_RETRIES)
                                    held.append(c)

                        t0 = time.perf_counter()
                        async with trio.open_nursery() as nursery:
                            for _ in range(allocations):
                                nursery.start_soon(one)
                        print(f"  {len(held)} allocations held "
                              f"(set up in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
                        res[f"B {len(held)} allocations ({await active(client)})"] = (
                            await scrape_times(client))
                        for c in held:
                            c.close()
                    await trio.sleep(1.0)
                    # Closing a client socket sends nothing: relay keeps those allocations
                    # (and their relay sockets) until their lifetime runs out, so the
                    # forwarding runs below also see them.
                    res[f"C clients gone ({await active(client)})"] = (
                        await scrape_times(client))
                return res

            phases = trio.run(alloc_phase)
            print(f"GET /metrics round trip over loopback, {number} scrapes per phase:")
            for label, t in phases.items():
                t.sort()
                print(f"  {label:<58} median {statistics.median(t) * 1e3:6.2f} ms"
                      f"  p90 {t[int(len(t) * 0.9)] * 1e3:6.2f} ms")

            # Forwarding with and without a client scraping as fast as it can.
            stop_flag = threading.Event()
            scrapes = [0]

            def hammer() -> None:
                with httpx.Client(trust_env=False) as c:
                    while not stop_flag.is_set():
                        c.get(url)
                        scrapes[0] += 1

            print(f"\nturn_load (20 clients, channel mode, 100 B, max rate, {load_seconds:.0f} s)"
                  " without / with a client scraping /metrics back to back:")
            for rnd in range(rounds):
                for scraping in (False, True):
                    th = None
                    if scraping:
                        stop_flag.clear()
                        scrapes[0] = 0
                        th = threading.Thread(target=hammer, daemon=True)
                        th.start()
                    res = run_load(LoadConfig(server=("127.0.0.1", port), clients=20,
                                              duration=load_seconds, progress=False,
                                              server_pid=server.pid))
                    if th is not None:
                        stop_flag.set()
                        th.join(10)
                    rate = (f"{scrapes[0] / load_seconds:.0f} scrapes/s" if scraping
                            else "no scrapes")
                    print(f"  round {rnd + 1} {rate:>16}: delivered {res.delivered_pps:8.0f} pkt/s"
                          f"  loss {res.loss_pct:5.2f}%  rtt p99 {res.rtt_p99_ms:6.2f} ms"
                          f"  server cpu {res.server_cpu_pct or 0:.0f}%")
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"live run failed: {exc}", file=sys.stderr)
        finally:
            stop(server)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--number", type=int, default=50, help="scrapes per case per round")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 5 (a smoke run)")
    ap.add_argument("--http", action="store_true", help="also time GET /metrics over HTTP")
    ap.add_argument("--live", action="store_true",
                    help="also scrape a real relay process holding allocations, and measure "
                         "forwarding during scrapes (needs the TURN gateway)")
    ap.add_argument("--allocations", type=int, default=10_000, help="held in --live")
    ap.add_argument("--load-seconds", type=float, default=5.0, help="per turn_load run")
    args = ap.parse_args(argv)
    rounds, number = (3, 5) if args.quick else (args.rounds, args.number)
    print(f"bench_scrape: python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {platform.platform()}")
    print(f"conditions: {rounds} interleaved rounds x {number} scrapes per case; "
          f"per-scrape times; process/platform/GC collectors included in 'scrape'")
    allocs = [0, 10_000]
    run_inprocess(rounds, number, [(1, 1), (10, 10), (100, 100)], allocs)
    if args.http:
        run_http(rounds, number, allocs)
    if args.live:
        run_live(min(rounds, 3) if not args.quick else 1, number, args.allocations,
                 args.load_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
