"""A/B: relay's server CPU per echoed packet, two source trees under the same load.

Run from the repository root, with a ``git worktree`` of the commit to compare against:

    git worktree add /tmp/relay-base HEAD~1
    python -m benchmarks.ab_relay --base /tmp/relay-base --rounds 8

Each round starts relay from one tree, drives it with `turn_load` (a fixed offered rate,
ChannelData and then Send indications), stops it, then does the same with the other tree;
the order alternates between rounds (A B, B A, ...) so a drift in the machine's load does
not favour one side.  It prints every run, the median µs of server CPU per echoed packet
per tree and mode, and the median of the per-round new/base ratios.  Loopback only; every
run is bounded by --duration.  Compare figures of one run only: other work on the machine
moves single rounds by 10-20 %, which the alternation and the medians absorb.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass

from benchmarks.report import write_json
from benchmarks.servers import run_relay
from benchmarks.turn_load import MAX_DURATION, LoadConfig, run_load

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("channel", "send")


@dataclass
class Run:
    round: int
    tree: str  # "base" or "new"
    mode: str
    cpu_pct: float
    delivered_pps: float
    loss_pct: float

    @property
    def us_per_echo(self) -> float:
        """Server CPU time per echoed packet (each echo crosses the server twice)."""
        if not self.delivered_pps:
            return float("nan")
        return self.cpu_pct / 100.0 / self.delivered_pps * 1e6


def measure(root: str, mode: str, args: argparse.Namespace) -> tuple[float, float, float]:
    with run_relay(root=root) as srv:
        res = run_load(LoadConfig(
            server=srv.address, clients=args.clients, mode=mode, size=args.size,
            rate=args.rate, duration=args.duration, server_pid=srv.pid, progress=False,
        ))
    if res.clients_ok != args.clients or res.server_cpu_pct is None:
        raise RuntimeError(f"{root}: {res.setup_failures} client(s) failed setup "
                           f"({res.setup_errors[:1]}) or no CPU figure")
    return res.server_cpu_pct, res.delivered_pps, res.loss_pct


def compare(args: argparse.Namespace) -> list[Run]:
    trees = [("base", args.base), ("new", args.new)]
    runs: list[Run] = []
    for r in range(args.rounds):
        for mode in args.modes:
            for name, root in trees if r % 2 == 0 else trees[::-1]:
                cpu, pps, loss = measure(root, mode, args)
                run = Run(r, name, mode, cpu, pps, loss)
                runs.append(run)
                print(f"round {r} {mode:7s} {name:4s}: server cpu {cpu:5.1f}% delivered "
                      f"{pps:7.0f} pkt/s loss {loss:.2f}% -> {run.us_per_echo:.2f} us/echo",
                      file=sys.stderr, flush=True)
    return runs


def summary(runs: list[Run], modes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        per = {t: [x.us_per_echo for x in runs if x.mode == mode and x.tree == t]
               for t in ("base", "new")}
        ratios = [n / b for b, n in zip(per["base"], per["new"], strict=True)]
        out[mode] = {
            "base_us": statistics.median(per["base"]),
            "new_us": statistics.median(per["new"]),
            "ratio": statistics.median(ratios),
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--base", required=True, help="source tree of the commit to compare with")
    p.add_argument("--new", default=HERE, help="source tree under test (default: this one)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--modes", default="channel,send",
                   help="comma-separated: channel, send (default both)")
    p.add_argument("-n", "--clients", type=int, default=20)
    p.add_argument("-s", "--size", type=int, default=100)
    p.add_argument("-r", "--rate", type=float, default=20000.0,
                   help="total offered packets/s (default 20000: well below saturation)")
    p.add_argument("-t", "--duration", type=float, default=6.0)
    p.add_argument("--json", metavar="FILE", help="write every run and the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    args.modes = tuple(m for m in args.modes.split(",") if m)
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error("--modes takes channel and/or send")
    if not 1 <= args.rounds <= 50:
        p.error("--rounds must be 1..50")
    if not 0 < args.duration <= MAX_DURATION or args.rate <= 0:
        p.error(f"--duration must be in (0, {MAX_DURATION:.0f}] and --rate > 0")
    for tree in (args.base, args.new):
        if not os.path.isfile(os.path.join(tree, "relay", "__main__.py")):
            p.error(f"{tree} is not a relay source tree (no relay/__main__.py)")
    try:
        runs = compare(args)
    except (RuntimeError, OSError) as exc:
        print(f"ab_relay: error: {exc}", file=sys.stderr)
        return 1
    result = summary(runs, args.modes)
    for mode, s in result.items():
        print(f"ab_relay {mode}: server CPU per echoed packet, median of {args.rounds} rounds: "
              f"base {s['base_us']:.2f} us, new {s['new_us']:.2f} us, "
              f"median new/base {s['ratio']:.3f}")
    if args.json:
        write_json(args.json, {"runs": [vars(r) | {"us_per_echo": r.us_per_echo} for r in runs],
                               "summary": result, "config": vars(args)})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
