"""sweep: offered ChannelData rate stepped up to saturation, for coturn and relay.

At every step both servers get the same load (A B order), so machine noise hits both. The
result is written as JSON and drawn as a PNG with two panels: delivered vs offered
packets/s, and RTT p99 vs offered packets/s, relay and coturn on the same axes. Operators
size machines from it: the knee of the delivered curve is the capacity of one process.

Drawing needs matplotlib (``pip install 'relay[benchmarks]'``); without it the JSON is still
written and ``--plot-only FILE`` can draw it later.

Example::

    python -m benchmarks.sweep --rates 2000,5000,10000,20000,30000,40000,60000 \\
        --json benchmarks/results/sweep-channel.json --png benchmarks/results/sweep.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from benchmarks.compare_coturn import SERVERS, log, start_server
from benchmarks.report import conditions, write_json
from benchmarks.servers import PASSWORD, USERNAME, coturn_available
from benchmarks.turn_load import LoadConfig, echo_peers, run_load

DEFAULT_RATES = "2000,5000,10000,15000,20000,30000,40000,50000,60000,80000"


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    points: dict[str, list[dict[str, float]]] = {s: [] for s in args.servers}
    with contextlib.ExitStack() as stack:
        peer = stack.enter_context(echo_peers("127.0.0.1", args.peer_workers))
        servers = {name: stack.enter_context(start_server(name)) for name in args.servers}
        for rate in rates:
            for name in args.servers:
                srv = servers[name]
                cfg = LoadConfig(server=srv.address, username=USERNAME, password=PASSWORD,
                                 clients=args.clients, mode=args.mode, size=args.size,
                                 rate=rate, duration=args.seconds, workers=args.workers,
                                 peer=peer, server_pid=srv.pid, progress=False, label=name)
                res = run_load(cfg)
                pt = {"offered": rate, "offered_actual": res.offered_pps,
                      "delivered": res.delivered_pps, "loss_pct": res.loss_pct,
                      "rtt_p50_ms": res.rtt_p50_ms, "rtt_p99_ms": res.rtt_p99_ms,
                      "server_cpu_pct": res.server_cpu_pct if res.server_cpu_pct is not None
                      else float("nan")}
                points[name].append(pt)
                log(f"  {name:6} offered {rate:8.0f} delivered {res.delivered_pps:8.0f} loss "
                    f"{res.loss_pct:6.2f}% p99 {res.rtt_p99_ms:8.3f} ms cpu "
                    f"{pt['server_cpu_pct']:.0f}%")
    return {
        "conditions": conditions(),
        "setup": {"mode": args.mode, "clients": args.clients, "size": args.size,
                  "seconds_per_step": args.seconds, "workers": args.workers,
                  "servers": "coturn --relay-threads=1 vs relay (one process), loopback"},
        "points": points,
    }


def plot(data: dict[str, Any], png: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("sweep: drawing needs matplotlib: pip install 'relay[benchmarks]' "
                         "(the JSON was written; draw later with --plot-only)") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    styles = {"coturn": ("tab:blue", "o"), "relay": ("tab:red", "s")}
    top = 0.0
    for name, pts in data["points"].items():
        if not pts:
            continue
        color, marker = styles.get(name, ("tab:gray", "x"))
        x = [p["offered"] for p in pts]
        top = max(top, *x)
        ax1.plot(x, [p["delivered"] for p in pts], marker=marker, color=color, label=name)
        ax2.plot(x, [p["rtt_p99_ms"] for p in pts], marker=marker, color=color, label=name)
    ax1.plot([0, top], [0, top], linestyle=":", color="gray", label="offered")
    ax1.set_xlabel("offered packets/s")
    ax1.set_ylabel("delivered (echoed) packets/s")
    ax1.set_title("Throughput")
    ax1.legend()
    ax1.grid(True, alpha=0.3)
    ax2.set_xlabel("offered packets/s")
    ax2.set_ylabel("RTT p99 (ms, log)")
    ax2.set_yscale("log")
    ax2.set_title("Round-trip time p99")
    ax2.legend()
    ax2.grid(True, alpha=0.3)
    setup = data.get("setup", {})
    cond = data.get("conditions", {})
    fig.suptitle(f"TURN {setup.get('mode', 'channel')} relay, {setup.get('clients')} clients, "
                 f"{setup.get('size')} B payload, loopback; {cond.get('cpu', '')} "
                 f"x{cond.get('cpus', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep",
        description="Step the offered rate to saturation for coturn and relay; write JSON "
                    "and a PNG chart.")
    p.add_argument("--rates", default=DEFAULT_RATES, help="comma-separated offered pkt/s")
    p.add_argument("--servers", default="coturn,relay", help="subset of coturn,relay")
    p.add_argument("--mode", choices=("channel", "send"), default="channel")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per step (default 3)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--peer-workers", type=int, default=1)
    p.add_argument("--json", default="benchmarks/results/sweep-channel.json")
    p.add_argument("--png", default="benchmarks/results/sweep.png")
    p.add_argument("--plot-only", metavar="JSON", help="only draw an existing sweep JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.plot_only:
        with open(args.plot_only) as fh:
            plot(json.load(fh), args.png)
        print(f"sweep: wrote {args.png}")
        return 0
    args.servers = [x for x in args.servers.split(",") if x]
    if not args.servers or any(x not in SERVERS for x in args.servers):
        p.error("--servers must be a subset of coturn,relay")
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error("--rates must be comma-separated numbers")
    if not rates or len(rates) > 40 or any(not 0 < r <= 1e6 for r in rates):
        p.error("--rates: 1..40 rates, each in (0, 1e6]")
    if not 0 < args.seconds <= 60:
        p.error("--seconds must be in (0, 60]")
    if "coturn" in args.servers and not coturn_available():
        print("sweep: error: coturn's turnserver is not installed", file=sys.stderr)
        return 1
    try:
        data = run_sweep(args)
    except (RuntimeError, OSError) as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 1
    write_json(args.json, data)
    print(f"sweep: wrote {args.json}")
    plot(data, args.png)
    print(f"sweep: wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
