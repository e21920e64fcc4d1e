"""relay with 1 and 2 TURN workers against coturn with 1 and 2 relay threads, A B A B.

    python -m benchmarks.workers_bench --rounds 3 -n 50 -r 25000 -t 6

Each round runs the same fixed-rate ChannelData load (`turn_load`; `--mode send`: Send and
Data indications) through relay with
`turn.workers: 1`, relay with `turn.workers: 2` (both on the default data plane: compiled
where numba is installed), relay with one worker on the Python path (`turn.data_plane:
python`), coturn `--relay-threads=1` and coturn `--relay-threads=2`, in an order that is
reversed every other round, and prints server CPU
(the process and its children: relay's workers) per echoed packet, loss, packets per
server CPU-second, and, for relay with 2 workers, the share of received datagrams per
worker (from `/status`).  Medians per server at the end.  Loopback only; every run is
bounded by --duration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import urllib.request
from dataclasses import dataclass, field

from benchmarks.report import write_json
from benchmarks.servers import free_udp_port, run_coturn, run_relay
from benchmarks.turn_load import MAX_DURATION, LoadConfig, run_load

# relay-w*: the default data plane (compiled where numba is installed); relay-py-w1: the
# Python path (turn.data_plane: python), for the A/B of the two planes
SERVERS = ("relay-w1", "relay-w2", "relay-py-w1", "coturn-t1", "coturn-t2")


@dataclass
class Run:
    round: int
    server: str
    cpu_pct: float
    delivered_pps: float
    loss_pct: float
    worker_share: list[float] = field(default_factory=list)

    @property
    def us_per_echo(self) -> float:
        return self.cpu_pct / 100.0 / self.delivered_pps * 1e6 if self.delivered_pps else 0.0

    @property
    def packets_per_cpu_second(self) -> float:
        """Datagrams through the server (two per echo) per second of server CPU."""
        return 2 * self.delivered_pps / (self.cpu_pct / 100.0) if self.cpu_pct else 0.0


def _status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        doc: dict[str, object] = json.load(resp)
        return doc


def measure(server: str, args: argparse.Namespace, r: int) -> Run:
    load = dict(clients=args.clients, mode=args.mode, size=args.size, rate=args.rate,
                duration=args.duration, progress=False)
    share: list[float] = []
    if server.startswith("relay"):
        workers = int(server[-1])
        health = free_udp_port()  # a free TCP port is as likely; retried by the OS if not
        plane = "python" if "-py-" in server else None
        with run_relay(workers=workers, health_port=health, data_plane=plane) as srv:
            res = run_load(LoadConfig(server=srv.address, server_pid=srv.pid, **load))  # type: ignore[arg-type]
            if workers > 1:
                doc = _status(health)
                packets = [int(w["packets"]) for w in doc.get("workers", [])]  # type: ignore[attr-defined, index]
                total = sum(packets) or 1
                share = [round(100 * p / total, 1) for p in packets]
    else:
        with run_coturn(relay_threads=int(server[-1])) as srv:
            res = run_load(LoadConfig(server=srv.address, server_pid=srv.pid, **load))  # type: ignore[arg-type]
    if res.clients_ok != args.clients or res.server_cpu_pct is None:
        raise RuntimeError(f"{server}: {res.setup_failures} client(s) failed setup")
    return Run(r, server, res.server_cpu_pct, res.delivered_pps, res.loss_pct, share)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("-n", "--clients", type=int, default=50)
    p.add_argument("--mode", choices=("channel", "send"), default="channel",
                   help="ChannelData, or Send/Data indications")
    p.add_argument("-s", "--size", type=int, default=100)
    p.add_argument("-r", "--rate", type=float, default=25000.0)
    p.add_argument("-t", "--duration", type=float, default=6.0)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION}]")
    servers = [s for s in args.servers.split(",") if s]
    runs: list[Run] = []
    for r in range(args.rounds):
        for server in servers if r % 2 == 0 else servers[::-1]:
            run = measure(server, args, r)
            runs.append(run)
            print(f"round {r} {server:11s}: cpu {run.cpu_pct:5.1f}% delivered "
                  f"{run.delivered_pps:7.0f} pkt/s loss {run.loss_pct:.2f}% -> "
                  f"{run.us_per_echo:.2f} us/echo, {run.packets_per_cpu_second:,.0f} pkt per "
                  f"CPU-s" + (f", per worker {run.worker_share} %" if run.worker_share else ""),
                  file=sys.stderr, flush=True)
    print(f"median of {args.rounds} rounds, {args.clients} clients, {args.rate:.0f} echo/s, "
          f"{args.duration:.0f} s:")
    for server in servers:
        mine = [x for x in runs if x.server == server]
        us = statistics.median(x.us_per_echo for x in mine)
        loss = statistics.median(x.loss_pct for x in mine)
        ppcs = statistics.median(x.packets_per_cpu_second for x in mine)
        shares = [max(x.worker_share) for x in mine if x.worker_share]
        extra = f", busiest worker {max(shares):.1f} % of packets" if shares else ""
        print(f"  {server:11s} {us:6.2f} us/echo  loss {loss:.2f} %  {ppcs:9,.0f} pkt/CPU-s"
              + extra)
    # ratios of CPU per echo within each round (the servers ran minutes apart, not days)
    for a, b in (("relay-w1", "coturn-t1"), ("relay-w2", "coturn-t2"),
                 ("relay-w1", "relay-py-w1")):
        if a in servers and b in servers:
            ratios = [x.us_per_echo / y.us_per_echo for x in runs if x.server == a
                      for y in runs if y.server == b and y.round == x.round and y.us_per_echo]
            print(f"  {a}/{b}: per-round ratios {' '.join(f'{q:.2f}' for q in ratios)}, "
                  f"median {statistics.median(ratios):.2f}")
    if args.json:
        write_json(args.json, {"args": vars(args), "runs": [x.__dict__ for x in runs]})


if __name__ == "__main__":
    main()
