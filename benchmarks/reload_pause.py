"""How long a config reload holds relay's event loop, with allocations live.

relay runs in this process (`relay.app.run`) with `--listeners` TURN-UDP listeners on
127.0.0.1 and `--allocations` allocations spread over them; one more client streams
ChannelData to an echo peer every `--interval` seconds.  Then `--reloads` reloads apply a
config that changes the password and adds or removes one listener (`Control.apply`, what
SIGHUP calls after parsing the file).  Printed: the time each `apply` took (it runs between
two packets, so it is the longest the data plane can wait for it), the stream's largest
gap between echoes outside and across the reloads, and packets lost.

    python -m benchmarks.reload_pause --listeners 8 --allocations 500 --reloads 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import trio

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.turnclient import TurnClient
from relay import app
from relay.app import Running
from relay.config import Config

USER, PASSWORDS = "bench", ("bench-pw-1", "bench-pw-2")


def make_config(listeners: int, extra: bool, password: str, ports: dict[str, int],
                relay_ports: tuple[int, int]) -> Config:
    lis = [{"name": f"udp{i}", "protocol": "TURN-UDP", "address": "127.0.0.1",
            "port": ports.get(f"udp{i}", 0), "routes": ["peers"]}
           for i in range(listeners + (1 if extra else 0))]
    return Config.from_mapping({
        "version": "v1",
        "admin": {"metrics_endpoint": "", "healthcheck_endpoint": "", "loglevel": "all:WARN"},
        "auth": {"type": "static", "realm": "bench",
                 "credentials": {"username": USER, "password": password}},
        "listeners": lis,
        "clusters": [{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1/32"]}],
        "turn": {"min_port": relay_ports[0], "max_port": relay_ports[1]},
    })


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    relay_ports = (args.min_port, args.min_port + args.allocations * 2 + 200)
    cfg = make_config(args.listeners, False, PASSWORDS[0], {}, relay_ports)
    async with trio.open_nursery() as nursery:
        rt: Running = await nursery.start(app.run, cfg)
        assert rt.control is not None
        ports = {n: s.port for n, s in rt.health.listeners.items()}
        peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
        clients: list[TurnClient] = []
        t0 = time.perf_counter()
        for i in range(args.allocations):
            c = TurnClient(("127.0.0.1", ports[f"udp{i % args.listeners}"]), USER, PASSWORDS[0])
            await c.__aenter__()
            await c.allocate()
            clients.append(c)
        setup = time.perf_counter() - t0
        streamer = TurnClient(("127.0.0.1", ports["udp0"]), USER, PASSWORDS[0])
        await streamer.__aenter__()
        await streamer.allocate()
        await streamer.channel_bind(0x4000, peer)
        arrivals: list[float] = []
        sent = 0

        async def receive() -> None:
            while True:
                kind, _m, _p = await streamer.recv(timeout=60)
                if kind == "channel":
                    arrivals.append(time.perf_counter())

        async def send(until: float) -> None:
            nonlocal sent
            while time.perf_counter() < until:
                await streamer.send_channel(0x4000, b"x" * 100)
                sent += 1
                await trio.sleep(args.interval)

        applies: list[float] = []
        windows: list[tuple[float, float]] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(receive)
            total = 1.0 + args.reloads * args.spacing + 1.0
            inner.start_soon(send, time.perf_counter() + total)
            await trio.sleep(1.0)
            for r in range(args.reloads):
                new = make_config(args.listeners, r % 2 == 0, PASSWORDS[(r + 1) % 2], ports,
                                  relay_ports)
                a = time.perf_counter()
                ok = rt.control.apply(new)
                b = time.perf_counter()
                assert ok
                applies.append(b - a)
                windows.append((a, b))
                await trio.sleep(args.spacing)
            await trio.sleep(1.0 + 0.5)
            inner.cancel_scope.cancel()
        for c in [*clients, streamer]:
            c.close()
        nursery.cancel_scope.cancel()
    gaps = [(arrivals[i] - arrivals[i - 1], arrivals[i - 1], arrivals[i])
            for i in range(1, len(arrivals))]
    across = [g for g, s, e in gaps if any(s <= b and e >= a for a, b in windows)]
    outside = [g for g, s, e in gaps if not any(s <= b and e >= a for a, b in windows)]
    return {
        "listeners": args.listeners, "allocations": args.allocations,
        "reloads": args.reloads, "interval_s": args.interval, "setup_s": setup,
        "apply_ms_median": statistics.median(applies) * 1e3,
        "apply_ms_max": max(applies) * 1e3,
        "gap_ms_max_outside": max(outside) * 1e3 if outside else 0.0,
        "gap_ms_max_across_reload": max(across) * 1e3 if across else 0.0,
        "sent": sent, "received": len(arrivals), "lost": sent - len(arrivals),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reload_pause", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listeners", type=int, default=8)
    p.add_argument("--allocations", type=int, default=500)
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--spacing", type=float, default=0.2, help="seconds between reloads")
    p.add_argument("--interval", type=float, default=0.002, help="seconds between packets")
    p.add_argument("--min-port", type=int, default=20000,
                   help="first relay port (the range covers every allocation)")
    args = p.parse_args(argv)
    if args.listeners < 1 or args.allocations < 0 or args.reloads < 1:
        p.error("need at least one listener and one reload")
    if not 1024 <= args.min_port <= 65535 - args.allocations * 2 - 200:
        p.error("--min-port leaves no room for the relay port range")
    res = trio.run(main_async, args)
    print(f"conditions: {res['listeners']} TURN-UDP listeners, {res['allocations']} "
          f"allocations (+1 streaming a 100-byte ChannelData every {args.interval * 1e3:g} ms), "
          f"{res['reloads']} reloads {args.spacing:g} s apart (password changed, a listener "
          f"added/removed each time); python {sys.version.split()[0]}", file=sys.stderr)
    print(f"apply: median {res['apply_ms_median']:.2f} ms, max {res['apply_ms_max']:.2f} ms; "
          f"largest echo gap: {res['gap_ms_max_outside']:.2f} ms without a reload, "
          f"{res['gap_ms_max_across_reload']:.2f} ms across one; packets sent "
          f"{res['sent']}, echoed {res['received']}, lost {res['lost']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
