"""Large-message flood: does a hostile sender of huge STUN requests slow everyone else?

Starts relay (``python -m relay``) on loopback, or uses ``--target HOST:PORT``, then for
``--duration`` seconds:

* a flooder process sends unauthenticated 64 KB Binding requests carrying 8,000
  attributes and 48 KB CreatePermission requests carrying 4,000 XOR-PEER-ADDRESS, each at
  ``--rate`` per second (default 300/s each, about 260 Mbit/s together);
* this process, from its own socket, sends small Binding requests at ``--probe-rate`` and
  measures each round trip (a probe unanswered within ``--probe-timeout`` counts as lost).

Prints the conditions, the flood actually sent, and the probes' p50/p99/max and losses, and
``--json FILE`` writes them.  ``--root DIR`` runs relay from another source tree (e.g. an
exported older commit) for a before/after comparison.

    python -m benchmarks.bench_flood --duration 10
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import struct
import sys
import time
from typing import Any

from benchmarks.report import (
    check_loopback,
    conditions,
    ms,
    parse_hostport,
    summarize,
    write_json,
)
from benchmarks.servers import run_relay

MAGIC = 0x2112A442


def _header(mtype: int, body: bytes) -> bytes:
    return struct.pack("!HHI12s", mtype, len(body), MAGIC, os.urandom(12)) + body


def flood_binding(attributes: int = 8000) -> bytes:
    """A Binding request of `attributes` 4-byte comprehension-optional attributes."""
    return _header(0x0001, (struct.pack("!HH", 0x8022, 4) + b"flod") * attributes)


def flood_create_permission(peers: int = 4000) -> bytes:
    """A CreatePermission request (no credentials) with `peers` XOR-PEER-ADDRESS (IPv4)."""
    parts = []
    for i in range(peers):
        port = (5000 + i) ^ (MAGIC >> 16)
        ip = (0xC0000200 + (i % 254) + 1) ^ MAGIC  # 192.0.2.x
        parts.append(struct.pack("!HHBBHI", 0x0012, 8, 0, 1, port, ip))
    return _header(0x0008, b"".join(parts))


def _flooder(target: tuple[str, int], rate: float, duration: float, out: Any) -> None:
    """Send both kinds of flood message at `rate` each per second for `duration`."""
    fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    messages = [flood_binding(), flood_create_permission()]
    sent = [0, 0]
    failed = 0
    start = time.perf_counter()
    interval = 1.0 / rate if rate > 0 else 0.0
    n = 0
    while True:
        now = time.perf_counter()
        if now - start >= duration:
            break
        due = start + n * interval
        if due > now:
            time.sleep(min(due - now, 0.005))
            continue
        for k, msg in enumerate(messages):
            try:
                sock.sendto(msg, target)
                sent[k] += 1
            except OSError:
                failed += 1
        n += 1
    sock.close()
    out.put({"binding_64k_sent": sent[0], "create_permission_48k_sent": sent[1],
             "send_errors": failed, "binding_64k_bytes": len(messages[0]),
             "create_permission_48k_bytes": len(messages[1]),
             "seconds": time.perf_counter() - start})


def probe(target: tuple[str, int], rate: float, duration: float,
          timeout: float) -> tuple[list[float], int]:
    """Binding round trips (seconds) at `rate` per second for `duration`; and losses."""
    fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    rtts: list[float] = []
    lost = 0
    with socket.socket(fam, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1" if fam == socket.AF_INET6 else "127.0.0.1", 0))
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < duration:
            due = start + n / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            n += 1
            tid = os.urandom(12)
            t0 = time.perf_counter()
            sock.sendto(struct.pack("!HHI12s", 0x0001, 0, MAGIC, tid), target)
            deadline = t0 + timeout
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    lost += 1
                    break
                sock.settimeout(left)
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    lost += 1
                    break
                if data[8:20] == tid:
                    rtts.append(time.perf_counter() - t0)
                    break
    return rtts, lost


def run(target: tuple[str, int], args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    baseline, base_lost = probe(target, args.probe_rate, args.baseline, args.probe_timeout)
    flooder = ctx.Process(target=_flooder, args=(target, args.rate, args.duration, out))
    flooder.start()
    try:
        time.sleep(0.5)  # let the flood reach its rate before the first probe
        rtts, lost = probe(target, args.probe_rate, args.duration - 1.0, args.probe_timeout)
        flood = out.get(timeout=args.duration + 30)
    finally:
        flooder.join(10)
        if flooder.is_alive():
            flooder.kill()
    result = {
        "conditions": conditions(),
        "target": f"{target[0]}:{target[1]}",
        "flood_rate_each_per_s": args.rate,
        "flood": flood,
        "probe_rate_per_s": args.probe_rate,
        "baseline": {**summarize(baseline, (50, 99)), "samples": len(baseline),
                     "lost": base_lost},
        "during_flood": {**summarize(rtts, (50, 99)), "samples": len(rtts), "lost": lost},
    }
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_flood", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="HOST:PORT of a running server (default: start relay)")
    p.add_argument("--root", help="run relay from this source tree instead of this checkout")
    p.add_argument("--duration", type=float, default=10.0, help="flood seconds (default 10)")
    p.add_argument("--baseline", type=float, default=3.0,
                   help="seconds of probes before the flood (default 3)")
    p.add_argument("--rate", type=float, default=300.0,
                   help="flood messages/s of each kind (default 300)")
    p.add_argument("--probe-rate", type=float, default=100.0, help="probes/s (default 100)")
    p.add_argument("--probe-timeout", type=float, default=1.0,
                   help="seconds before a probe counts as lost (default 1)")
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--allow-remote-target", action="store_true",
                   help="allow a non-loopback --target (only servers you may load)")
    return p


def _print(result: dict[str, Any]) -> None:
    c = result["conditions"]
    f = result["flood"]
    print(f"conditions: {c['cpus']} CPUs ({c['cpu']}), Python {c['python']}, "
          f"trio {c['trio']}, target {result['target']}")
    print(f"flood: {f['binding_64k_sent']} Bindings of {f['binding_64k_bytes']} B and "
          f"{f['create_permission_48k_sent']} CreatePermissions of "
          f"{f['create_permission_48k_bytes']} B in {f['seconds']:.1f} s "
          f"({result['flood_rate_each_per_s']:g}/s each), {f['send_errors']} send errors")
    for name in ("baseline", "during_flood"):
        r = result[name]
        print(f"{name}: Binding p50 {ms(r['p50'])} p99 {ms(r['p99'])} max {ms(r['max'])} ms "
              f"({r['samples']} answered, {r['lost']} lost)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration < 2:
        print("--duration must be at least 2 s", file=sys.stderr)
        return 2
    if args.target:
        host, port = parse_hostport(args.target, 3478)
        host = check_loopback(host, "--target", args.allow_remote_target)
        result = run((host, port), args)
    else:
        with run_relay(root=args.root) as server:
            result = run(server.address, args)
    _print(result)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
