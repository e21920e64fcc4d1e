"""compare_coturn: relay against coturn, same loads, alternating A B A B, several rounds.

Starts coturn (``turnserver``, single relay thread) and relay (``python -m relay -c CFG``,
one process) on loopback with equivalent settings (see benchmarks/servers.py), then for each
round runs, against coturn and then relay:

* ``channel``: the highest offered ChannelData echo rate with < 1 % loss (rate search),
* ``send``: the same with Send/Data indications,
* ``rtt``: RTT p99 at 50 % of coturn's max ChannelData rate of that round,
* ``churn``: allocation churn (allocate, bind, refresh, delete) in allocations/s,
* ``memory``: server RSS per idle allocation (fresh servers, measured once per round).

It prints every figure, the medians over rounds and the relay/coturn ratio.

``--generator uclient`` instead drives both servers with coturn's own ``turnutils_uclient``
(ChannelData by default, ``-s`` Send indications) so our generator is not the only judge.

Example::

    python -m benchmarks.compare_coturn --rounds 3 --json benchmarks/results/compare.json
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.report import conditions, median, write_json
from benchmarks.servers import (
    COTURN_PORTS,
    PASSWORD,
    RELAY_PORTS,
    USERNAME,
    ServerProcess,
    coturn_available,
    run_coturn,
    run_relay,
)
from benchmarks.turn_alloc import AllocConfig, run_alloc
from benchmarks.turn_load import LoadConfig, LoadResult, echo_peers, run_load

SERVERS = ("coturn", "relay")  # order of A B in every round
ALL_METRICS = ("channel", "send", "rtt", "churn", "memory")
LOWER_IS_BETTER = {"rtt", "memory", "cpu", "uclient_channel_loss", "uclient_channel_rtt",
                   "uclient_send_loss", "uclient_send_rtt"}
UNITS = {"channel": "pkt/s", "send": "pkt/s", "rtt": "ms p99", "churn": "alloc/s",
         "memory": "KiB/alloc", "cpu": "us/echo",
         "uclient_channel_pps": "msg/s", "uclient_channel_loss": "%",
         "uclient_channel_rtt": "ms avg", "uclient_send_pps": "msg/s",
         "uclient_send_loss": "%", "uclient_send_rtt": "ms avg"}


@contextlib.contextmanager
def start_server(name: str) -> Iterator[ServerProcess]:
    if name == "coturn":
        with run_coturn(port_range=COTURN_PORTS) as srv:
            yield srv
    else:
        with run_relay(port_range=RELAY_PORTS) as srv:
            yield srv


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def probe(srv: ServerProcess, mode: str, rate: float, args: argparse.Namespace,
          peer: tuple[str, int]) -> LoadResult:
    cfg = LoadConfig(server=srv.address, username=USERNAME, password=PASSWORD,
                     clients=args.clients, mode=mode, size=args.size, rate=rate,
                     duration=args.probe_seconds, workers=args.workers, peer=peer,
                     server_pid=srv.pid, progress=False, label=srv.name)
    return run_load(cfg)


def probe_ok(srv: ServerProcess, mode: str, rate: float, args: argparse.Namespace,
             peer: tuple[str, int]) -> tuple[bool, LoadResult]:
    """Probe ``rate``; a failed probe is repeated up to ``args.confirm`` times and the rate
    passes if any attempt passes.  Noise from other processes on the machine only ever makes
    a probe fail (never pass), so one unlucky second must not end the search."""
    for attempt in range(args.confirm + 1):
        res = probe(srv, mode, rate, args, peer)
        ok = res.loss_pct < args.loss and res.offered_pps >= 0.97 * rate
        log(f"  {srv.name:6} {mode:7} offered {rate:8.0f} -> delivered {res.delivered_pps:8.0f}"
            f" loss {res.loss_pct:5.2f}% p99 {res.rtt_p99_ms:.2f} ms "
            f"cpu {res.server_cpu_pct or 0:.0f}% {'ok' if ok else 'saturated'}"
            f"{' (repeat)' if attempt else ''}")
        if ok:
            return True, res
    return False, res


def find_max_rate(srv: ServerProcess, mode: str, args: argparse.Namespace,
                  peer: tuple[str, int]) -> tuple[float, LoadResult | None]:
    """Highest offered rate with loss < args.loss % (geometric ramp, then bisection)."""
    good: float = 0.0
    good_res: LoadResult | None = None
    bad: float | None = None
    rate = float(args.start_rate)
    for _ in range(12):  # ramp: bounded
        ok, res = probe_ok(srv, mode, rate, args, peer)
        if not ok:
            bad = rate
            break
        good, good_res = rate, res
        rate *= 1.6
    if bad is None:
        return good, good_res
    for _ in range(args.bisect):
        lo = good if good > 0 else bad / 4
        mid = (lo + bad) / 2
        ok, res = probe_ok(srv, mode, mid, args, peer)
        if ok:
            good, good_res = mid, res
        else:
            bad = mid
    return good, good_res


def churn(srv: ServerProcess, args: argparse.Namespace) -> float:
    cfg = AllocConfig(server=srv.address, username=USERNAME, password=PASSWORD,
                      concurrency=args.churn_concurrency, duration=args.churn_seconds,
                      workers=args.workers, server_pid=srv.pid, progress=False,
                      label=srv.name)
    res = run_alloc(cfg)
    # Server CPU says whether the server or the (Python) generator limits the churn.
    log(f"  {srv.name:6} churn   {res.churn_rate:8.0f} alloc/s ({res.churn_errors} errors) "
        f"server cpu {res.churn_server_cpu_pct or 0:.0f}%")
    return res.churn_rate


def memory(name: str, args: argparse.Namespace) -> dict[int, float]:
    """KiB of server RSS per idle allocation at each target count, on a fresh server."""
    counts = tuple(sorted(int(x) for x in args.memory_allocations.split(",") if x.strip()))
    with start_server(name) as srv:
        cfg = AllocConfig(server=srv.address, username=USERNAME, password=PASSWORD,
                          duration=0, workers=max(2, args.workers), memory=counts,
                          server_pid=srv.pid, progress=False, label=name)
        res = run_alloc(cfg)
    out: dict[int, float] = {}
    for m in res.memory:
        kib = m["bytes_per_allocation"] / 1024
        out[int(m["target"])] = kib
        log(f"  {name:6} memory  {kib:8.2f} KiB/alloc over {int(m['allocations'])} "
            f"allocations ({int(m['failed'])} failed)")
    return out


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    metrics = [m for m in args.metrics.split(",") if m]
    figures: dict[str, dict[str, list[float]]] = {
        m: {s: [] for s in SERVERS} for m in metrics if m != "memory"}
    with contextlib.ExitStack() as stack:
        peer = stack.enter_context(echo_peers("127.0.0.1", args.peer_workers))
        servers = {name: stack.enter_context(start_server(name)) for name in args.servers}
        for rnd in range(1, args.rounds + 1):
            log(f"round {rnd}/{args.rounds}")
            coturn_max = None
            for metric in metrics:
                for name in args.servers:  # A B within every metric of every round
                    srv = servers[name]
                    if metric in ("channel", "send"):
                        rate, _res = find_max_rate(srv, metric, args, peer)
                        figures[metric][name].append(rate)
                        if metric == "channel" and name == "coturn":
                            coturn_max = rate
                    elif metric == "rtt":
                        base = coturn_max or args.rtt_rate
                        res = probe(srv, "channel", base / 2, args, peer)
                        log(f"  {name:6} rtt     at {base / 2:8.0f} pkt/s: p50 "
                            f"{res.rtt_p50_ms:.3f} p99 {res.rtt_p99_ms:.3f} ms loss "
                            f"{res.loss_pct:.2f}% server cpu {res.server_cpu_pct or 0:.0f}%")
                        figures[metric][name].append(res.rtt_p99_ms)
                        # Server CPU per echoed packet at that fixed rate: the server's own
                        # cost, whatever limits the whole machine at saturation.
                        if res.server_cpu_pct is not None and res.delivered_pps > 0:
                            figures.setdefault("cpu", {s: [] for s in SERVERS})[name].append(
                                res.server_cpu_pct / 100 * 1e6 / res.delivered_pps)
                    elif metric == "churn":
                        figures[metric][name].append(churn(srv, args))
                    elif metric == "memory":
                        for count, kib in memory(name, args).items():
                            figures.setdefault(f"memory_{count}", {s: [] for s in SERVERS})[
                                name].append(kib)
    return {"figures": figures}


# ---------------------------------------------------------------------------------------
# turnutils_uclient as the generator

UCLIENT_TOTALS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
UCLIENT_LOST = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\)")
UCLIENT_RTT = re.compile(r"Average round trip delay ([\d.]+) ms; min = ([\d.]+) ms, "
                         r"max = ([\d.]+) ms")
UCLIENT_TIME = re.compile(r"Total transmit time is (\d+)")


def parse_uclient(text: str) -> dict[str, float]:
    """The summary figures of a turnutils_uclient run."""
    out: dict[str, float] = {}
    totals = UCLIENT_TOTALS.findall(text)
    if totals:
        out["sent"], out["received"] = (float(x) for x in totals[-1])
    m = UCLIENT_LOST.search(text)
    if m:
        out["lost"], out["loss_pct"] = float(m.group(1)), float(m.group(2))
    m = UCLIENT_RTT.search(text)
    if m:
        out["rtt_avg_ms"], out["rtt_min_ms"], out["rtt_max_ms"] = (
            float(m.group(i)) for i in (1, 2, 3))
    m = UCLIENT_TIME.search(text)
    if m:
        out["transmit_seconds"] = float(m.group(1))
    return out


def uclient_once(srv: ServerProcess, peer: tuple[str, int], send: bool,
                 args: argparse.Namespace) -> dict[str, float]:
    exe = shutil.which("turnutils_uclient")
    if exe is None:
        raise RuntimeError("turnutils_uclient is not installed (Debian package coturn)")
    cmd = [exe, "-p", str(srv.address[1]), "-u", USERNAME, "-w", PASSWORD,
           "-e", peer[0], "-r", str(peer[1]), "-m", str(args.clients),
           "-n", str(args.uclient_messages), "-z", str(args.uclient_interval),
           "-l", str(args.size), "-c", "-X"]
    if send:
        cmd.append("-s")
    cmd.append(srv.address[0])
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.uclient_timeout)
    wall = time.monotonic() - t0
    fig = parse_uclient(proc.stdout + proc.stderr)
    if "received" not in fig:
        raise RuntimeError(f"could not parse turnutils_uclient output:\n{proc.stdout[-2000:]}"
                           f"{proc.stderr[-2000:]}")
    fig["wall_seconds"] = wall
    tx = fig.get("transmit_seconds") or wall
    fig["delivered_pps"] = fig["received"] / max(tx, 1.0)
    log(f"  {srv.name:6} uclient {'send' if send else 'channel':7} sent {fig['sent']:.0f} "
        f"recv {fig['received']:.0f} loss {fig.get('loss_pct', 0):.2f}% "
        f"~{fig['delivered_pps']:.0f} msg/s rtt avg {fig.get('rtt_avg_ms', 0):.3f} ms")
    return fig


def run_uclient(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, dict[str, list[float]]] = {
        k: {s: [] for s in SERVERS}
        for k in ("uclient_channel_pps", "uclient_channel_loss", "uclient_channel_rtt",
                  "uclient_send_pps", "uclient_send_loss", "uclient_send_rtt")}
    with contextlib.ExitStack() as stack:
        peer = stack.enter_context(echo_peers("127.0.0.1", args.peer_workers))
        servers = {name: stack.enter_context(start_server(name)) for name in args.servers}
        for rnd in range(1, args.rounds + 1):
            log(f"round {rnd}/{args.rounds} (turnutils_uclient)")
            for kind, send in (("channel", False), ("send", True)):
                for name in args.servers:
                    fig = uclient_once(servers[name], peer, send, args)
                    figures[f"uclient_{kind}_pps"][name].append(fig["delivered_pps"])
                    figures[f"uclient_{kind}_loss"][name].append(fig.get("loss_pct", 0.0))
                    figures[f"uclient_{kind}_rtt"][name].append(
                        fig.get("rtt_avg_ms", float("nan")))
    return {"figures": figures}


# ---------------------------------------------------------------------------------------


def table(figures: dict[str, dict[str, list[float]]]) -> tuple[str, dict[str, Any]]:
    lines = [f"{'metric':30} {'coturn':>12} {'relay':>12} {'relay/coturn':>13}  rounds"]
    medians: dict[str, Any] = {}
    for metric, by_server in figures.items():
        c = median(by_server["coturn"])
        r = median(by_server["relay"])
        ratio = r / c if c and c == c and r == r else float("nan")
        unit = UNITS.get(metric.split("_")[0] if metric.startswith("memory") else metric, "")
        medians[metric] = {"coturn": c, "relay": r, "ratio": ratio, "unit": unit,
                           "rounds": by_server}
        lower = metric in LOWER_IS_BETTER or metric.startswith("memory")
        note = " (lower is better)" if lower else ""
        rounds = " ".join(f"{a:.4g}/{b:.4g}" for a, b in zip(by_server["coturn"],
                                                            by_server["relay"], strict=False))
        lines.append(f"{metric + ' [' + unit + ']':30} {c:12.4g} {r:12.4g} {ratio:13.3f}  "
                     f"{rounds}{note}")
    return "\n".join(lines), medians


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_coturn",
        description="Run identical loads against coturn and relay on loopback (A B A B) and "
                    "print medians and relay/coturn ratios.",
    )
    p.add_argument("--generator", choices=("ours", "uclient"), default="ours",
                   help="our turn_load/turn_alloc (default) or coturn's turnutils_uclient")
    p.add_argument("--servers", default="coturn,relay",
                   help="servers to run, in A B order (default coturn,relay)")
    p.add_argument("--rounds", type=int, default=3, help="A B rounds (default 3)")
    p.add_argument("--metrics", default=",".join(ALL_METRICS),
                   help=f"comma-separated subset of {','.join(ALL_METRICS)}")
    p.add_argument("--clients", type=int, default=20, help="allocations per load (default 20)")
    p.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    p.add_argument("--workers", type=int, default=1, help="generator processes (default 1)")
    p.add_argument("--peer-workers", type=int, default=1, help="echo peer processes")
    p.add_argument("--probe-seconds", type=float, default=2.0,
                   help="seconds per rate probe (default 2)")
    p.add_argument("--start-rate", type=float, default=4000,
                   help="first offered rate of the search, pkt/s (default 4000)")
    p.add_argument("--bisect", type=int, default=3, help="bisection steps (default 3)")
    p.add_argument("--loss", type=float, default=1.0, help="loss threshold %% (default 1)")
    p.add_argument("--confirm", type=int, default=1,
                   help="repeat a failed rate probe up to this many times before calling the "
                        "rate saturated (default 1; 0 = trust every probe)")
    p.add_argument("--rtt-rate", type=float, default=10000,
                   help="rate for the rtt metric if channel is not measured (default 10000)")
    p.add_argument("--churn-seconds", type=float, default=3.0)
    p.add_argument("--churn-concurrency", type=int, default=16)
    p.add_argument("--memory-allocations", default="1000,10000",
                   help="cumulative idle allocation counts for the memory metric "
                        "(default 1000,10000)")
    p.add_argument("--uclient-messages", type=int, default=2000,
                   help="turnutils_uclient -n (messages per client, default 2000)")
    p.add_argument("--uclient-interval", type=int, default=0,
                   help="turnutils_uclient -z in ms (default 0: as fast as it goes)")
    p.add_argument("--uclient-timeout", type=float, default=120.0)
    p.add_argument("--json", metavar="FILE", help="write all figures as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    bad = [m for m in args.metrics.split(",") if m and m not in ALL_METRICS]
    if bad:
        p.error(f"unknown metric(s) {bad}; choose from {ALL_METRICS}")
    args.servers = [x for x in args.servers.split(",") if x]
    if not args.servers or any(x not in SERVERS for x in args.servers):
        p.error(f"--servers must be a subset of {','.join(SERVERS)}")
    try:
        counts = [int(x) for x in args.memory_allocations.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= c <= 30000 for c in counts):
        p.error("--memory-allocations must be comma-separated counts in 1..30000")
    if not 1 <= args.rounds <= 20:
        p.error("--rounds must be 1..20")
    if not coturn_available():
        print("compare_coturn: error: coturn's turnserver is not installed "
              "(Debian: apt install coturn)", file=sys.stderr)
        return 1
    cond = conditions()
    header = (f"compare_coturn: generator={args.generator} rounds={args.rounds} "
              f"clients={args.clients} size={args.size}B probe={args.probe_seconds}s "
              f"loss<{args.loss}% workers={args.workers} | coturn --relay-threads=1, relay 1 "
              f"process | {cond['cpu']} x{cond['cpus']}, Python {cond['python']}")
    print(header, flush=True)
    runner: Callable[[argparse.Namespace], dict[str, Any]] = (
        run_uclient if args.generator == "uclient" else run_ours)
    try:
        out = runner(args)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"compare_coturn: error: {exc}", file=sys.stderr)
        return 1
    text, medians = table(out["figures"])
    print(text)
    if args.json:
        write_json(args.json, {"conditions": cond, "args": vars(args), "medians": medians,
                               "header": header})
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["find_max_rate", "main", "parse_uclient", "probe", "start_server"]
