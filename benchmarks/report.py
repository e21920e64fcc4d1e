"""Shared helpers of the load generators: RTT samples, percentiles, progress and output."""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import sys
import time
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import trio

MAX_SAMPLES = 500_000


class RttRecorder:
    """Collects RTT samples (seconds) with bounded memory.

    Every sample updates the exact count and maximum; the stored samples are thinned to every
    2nd, 4th, ... sample once ``limit`` is reached, so percentiles stay representative over
    the whole run.
    """

    __slots__ = ("_skip", "count", "limit", "max", "samples", "stride")

    def __init__(self, limit: int = MAX_SAMPLES) -> None:
        self.samples = array("d")
        self.limit = limit
        self.stride = 1
        self._skip = 0
        self.count = 0
        self.max = 0.0

    def add(self, rtt: float) -> None:
        self.count += 1
        if rtt > self.max:
            self.max = rtt
        self._skip += 1
        if self._skip < self.stride:
            return
        self._skip = 0
        self.samples.append(rtt)
        if len(self.samples) >= self.limit:
            self.samples = self.samples[::2]
            self.stride *= 2


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence; NaN if empty."""
    if not sorted_values:
        return float("nan")
    if q <= 0:
        return float(sorted_values[0])
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return float(sorted_values[k])


def summarize(values: Iterable[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """p50/p90/p99/max (and count) of a set of values."""
    data = sorted(values)
    out = {f"p{q:g}": percentile(data, q) for q in qs}
    out["max"] = float(data[-1]) if data else float("nan")
    out["count"] = float(len(data))
    return out


def median(values: Sequence[float]) -> float:
    data = sorted(v for v in values if v == v)
    if not data:
        return float("nan")
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def ms(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    return f"{seconds * 1000:.3f}"


def check_loopback(host: str, what: str, allow_remote: bool) -> str:
    """Return an IP literal for host; refuse non-loopback targets unless allowed."""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise SystemExit(f"error: {what} must be an IP address, got {host!r}") from None
    if not ip.is_loopback and not allow_remote:
        raise SystemExit(
            f"error: {what} {host} is not a loopback address; pass --allow-remote-target to "
            "load a server on another machine (only one you are allowed to load)")
    return str(ip)


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:3478', '[::1]:3478', '::1' or '127.0.0.1' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host, port
    if text.count(":") == 1:
        host, port_s = text.split(":")
        return host, int(port_s)
    return text, default_port


def conditions() -> dict[str, Any]:
    """The machine and interpreter a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "trio": trio.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(path: str, data: dict[str, Any]) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=float)
        fh.write("\n")


class Progress:
    """A live progress line on stderr (carriage-return updates on a terminal)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._last_plain = 0.0

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
        else:
            now = time.monotonic()
            if now - self._last_plain >= 1.0:
                self._last_plain = now
                self.stream.write(text + "\n")
                self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class CpuMeter:
    """CPU use of a process and its live child processes (relay's TURN workers), percent of
    one core, between start() and stop(), via psutil."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._proc: Any = None
        self._t0 = 0.0
        self._c0 = 0.0
        self.percent: float | None = None
        self.error: str | None = None
        if pid is not None:
            try:
                import psutil
            except ImportError:
                self.error = "psutil is not installed (pip install psutil)"
                return
            try:
                self._proc = psutil.Process(pid)
            except psutil.Error as exc:
                self.error = f"cannot read process {pid}: {exc}"

    def _cpu(self) -> float:
        t = self._proc.cpu_times()
        total = float(t.user + t.system)
        for child in self._proc.children(recursive=True):
            try:
                c = child.cpu_times()
            except Exception:  # gone meanwhile
                continue
            total += float(c.user + c.system)
        return total

    def start(self) -> None:
        if self._proc is not None:
            try:
                self._c0 = self._cpu()
                self._t0 = time.monotonic()
            except Exception as exc:
                self.error = str(exc)
                self._proc = None

    def stop(self) -> float | None:
        if self._proc is not None:
            try:
                c1 = self._cpu()
                dt = time.monotonic() - self._t0
                self.percent = 100.0 * (c1 - self._c0) / dt if dt > 0 else None
            except Exception as exc:
                self.error = str(exc)
        return self.percent


def raise_nofile(target: int = 65536) -> int:
    """Raise this process's open-file limit towards target (as far as allowed); return it."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in ((target, max(hard, target)), (min(target, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process in bytes (psutil, else /proc)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error as exc:
        raise RuntimeError(f"cannot read the memory of process {pid}: {exc}") from exc
