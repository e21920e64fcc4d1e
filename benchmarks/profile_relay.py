"""profile_relay: sample relay's stacks with py-spy while turn_load drives it.

Starts relay on loopback (same settings as compare_coturn), runs a turn_load in the
background, records ``--seconds`` of stacks with ``py-spy record --format raw`` and prints the
functions with the most samples: self time (the frame on top of the stack) and inclusive
time (anywhere on the stack). ``--svg`` also writes a flame graph.

py-spy is not a dependency: ``pip install py-spy``. It needs ptrace rights (root, or
``kernel.yama.ptrace_scope=0``).

Example::

    python -m benchmarks.profile_relay --rate 20000 --mode channel --seconds 8
    python -m benchmarks.profile_relay --pid 1234 --seconds 8   # any Python process
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from benchmarks.servers import PASSWORD, RELAY_PORTS, USERNAME, run_relay
from benchmarks.turn_load import LoadConfig, LoadResult, run_load


def py_spy() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    exe = here if os.path.exists(here) else shutil.which("py-spy")
    if exe is None:
        raise SystemExit("profile_relay: py-spy is not installed: pip install py-spy")
    return exe


def fold(raw: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Self counts per frame (line) and inclusive counts per function from py-spy's raw
    (folded) output, and the total sample count."""
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += n
        self_c[_short(frames[-1])] += n
        for f in {_function(_short(f)) for f in frames}:
            incl[f] += n
    return self_c, incl, total


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py:123)"; keep our package paths short.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "relay/", "benchmarks/"):
        i = where.find(marker)
        if i >= 0:
            where = where[i:] if marker != "site-packages/" else where[i + len(marker):]
            break
    else:
        where = os.path.basename(where)
    return f"{name} ({where})" if where else name


def _function(frame: str) -> str:
    # "func (module.py:123)" -> "func (module.py)"
    head, sep, tail = frame.rpartition(":")
    return head + ")" if sep and tail.rstrip(")").isdigit() else frame


def report(raw: str, top: int) -> str:
    self_c, incl, total = fold(raw)
    if not total:
        return "no samples"
    by_func: collections.Counter[str] = collections.Counter()
    for frame, n in self_c.items():
        by_func[_function(frame)] += n
    lines = [f"{total} samples (waiting in epoll shows as EpollIOManager.get_events)", "",
             "self time by function:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in by_func.most_common(top)]
    lines += ["", "self time by line:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_c.most_common(top)]
    lines += ["", "inclusive time by function:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def record(pid: int, seconds: float, rate: int, svg: str | None) -> str:
    exe = py_spy()
    with tempfile.TemporaryDirectory(prefix="relay-profile-") as tmp:
        out = os.path.join(tmp, "stacks.txt")
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
               "--rate", str(rate), "--format", "raw", "--output", out, "--nonblocking"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"py-spy failed: {proc.stderr.strip()[-2000:]}")
        with open(out) as fh:
            raw = fh.read()
        if svg:
            flame = [exe, "record", "--pid", str(pid), "--duration", "2", "--rate", str(rate),
                     "--output", svg, "--nonblocking"]
            subprocess.run(flame, capture_output=True, timeout=60, check=False)
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_relay",
                                description="Profile relay under turn_load with py-spy.")
    p.add_argument("--pid", type=int, help="profile this running process instead of "
                   "starting relay (no load is generated then)")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds to sample")
    p.add_argument("--sample-rate", type=int, default=200, help="py-spy samples/s")
    p.add_argument("--rate", type=float, default=20000, help="turn_load offered pkt/s")
    p.add_argument("--mode", choices=("channel", "send"), default="channel")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--svg", help="also write a flame graph SVG here")
    p.add_argument("--raw", help="also keep py-spy's folded stacks here")
    args = p.parse_args(argv)
    if not 1 <= args.seconds <= 120:
        p.error("--seconds must be 1..120")
    py_spy()
    if args.pid:
        raw = record(args.pid, args.seconds, args.sample_rate, args.svg)
    else:
        with run_relay(port_range=RELAY_PORTS) as srv:
            cfg = LoadConfig(server=srv.address, username=USERNAME, password=PASSWORD,
                             clients=args.clients, mode=args.mode, size=args.size,
                             rate=args.rate, duration=args.seconds + 6, server_pid=srv.pid,
                             progress=False, label="relay")
            box: dict[str, Any] = {}

            def load() -> None:
                try:
                    box["result"] = run_load(cfg)
                except Exception as exc:  # reported below
                    box["error"] = exc

            t = threading.Thread(target=load, daemon=True)
            t.start()
            time.sleep(3.0)  # past allocation setup
            raw = record(srv.pid, args.seconds, args.sample_rate, args.svg)
            t.join(args.seconds + 60)
        if "error" in box:
            print(f"profile_relay: load failed: {box['error']}", file=sys.stderr)
        res: LoadResult | None = box.get("result")
        if res is not None:
            print(res.summary_line())
    if args.raw:
        with open(args.raw, "w") as fh:
            fh.write(raw)
    print(report(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
