"""Start and stop the TURN servers under test (coturn and relay) as subprocesses.

Both get equivalent settings: one UDP listener on loopback, long-term credentials
(user "user", password "pass", realm "bench"), loopback peers allowed, a UDP relay port range
on loopback, and a single process. coturn runs with ``--relay-threads=1`` so both servers use
one thread for media; relay is one Python process.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from benchmarks.report import raise_nofile

USERNAME = "user"
PASSWORD = "pass"
REALM = "bench"

BINDING_REQUEST_TYPE = 0x0001
MAGIC_COOKIE = 0x2112A442


@dataclass
class ServerProcess:
    """A running TURN server: name, address of its UDP listener and its process."""

    name: str
    address: tuple[str, int]
    proc: subprocess.Popen[bytes]
    log_path: str
    command: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - limit))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""


def loopback_host(family: int = socket.AF_INET) -> str:
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago (best effort)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Relay port ranges stay below Linux's default ephemeral range (32768-60999), where the
# load generators' own client sockets live.
COTURN_PORTS = (10000, 21399)
RELAY_PORTS = (21400, 32767)


def random_port_range(size: int = 2000) -> tuple[int, int]:
    """A random relay port range inside 10000-32767 (so parallel runs rarely collide)."""
    start = random.randrange(10000, 32768 - size, 2)
    return start, start + size - 1


def stun_ping(address: tuple[str, int], timeout: float = 0.2) -> bool:
    """True if a STUN Binding request to address gets any STUN answer within timeout."""
    fam = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    tid = os.urandom(12)
    req = (BINDING_REQUEST_TYPE.to_bytes(2, "big") + (0).to_bytes(2, "big")
           + MAGIC_COOKIE.to_bytes(4, "big") + tid)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((loopback_host(fam), 0))
        s.settimeout(timeout)
        try:
            s.sendto(req, address)
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[8:20] == tid


def wait_ready(server: ServerProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with code {server.proc.returncode}:\n{server.log_tail()}")
        if stun_ping(server.address):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer STUN within {timeout} s:\n"
                       f"{server.log_tail()}")


def stop(server: ServerProcess, timeout: float = 5.0) -> None:
    stop_process(server.proc, timeout)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def coturn_available() -> bool:
    return shutil.which("turnserver") is not None


def coturn_command(host: str, port: int, min_port: int, max_port: int, *,
                   relay_threads: int = 1, log_file: str = "stdout",
                   pidfile: str = "turnserver.pid", extra: list[str] | None = None) -> list[str]:
    """coturn flags equivalent to relay's benchmark config (single relay thread)."""
    exe = shutil.which("turnserver") or "turnserver"
    return [
        exe, "-n", "--no-cli", f"--listening-ip={host}", f"--listening-port={port}",
        f"--relay-ip={host}", f"--min-port={min_port}", f"--max-port={max_port}",
        "--lt-cred-mech", f"--user={USERNAME}:{PASSWORD}", f"--realm={REALM}",
        "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-tcp",
        f"--relay-threads={relay_threads}", "--no-software-attribute",
        f"--log-file={log_file}", "--simple-log", f"--pidfile={pidfile}",
        "--no-tcp-relay", *(extra or []),
    ]


def relay_config_yaml(host: str, port: int, min_port: int, max_port: int,
                      guard: bool = False, *, workers: int = 1, health_port: int = 0,
                      workers_key: bool = True, data_plane: str | None = None) -> str:
    """A StunnerConfig v1 equivalent to coturn_command(); `guard`: keep relay's default
    401/438 reflection guard instead of turning it off; `workers` TURN worker processes
    (as coturn's relay threads); `health_port`: serve /status there (0: no admin);
    `workers_key`: the tree knows `turn.workers` (older trees refuse the key and run one
    process); `data_plane`: turn.data_plane (None: the tree's default)."""
    peers = "::1/128" if ":" in host else "127.0.0.1/32"
    return (
        "version: v1\n"
        "admin: {metrics_endpoint: \"\", healthcheck_endpoint: "
        + (f"\"http://{host if ':' not in host else '[' + host + ']'}:{health_port}\""
           if health_port else "\"\"")
        + ", loglevel: \"all:WARN\"}\n"
        f"auth: {{type: static, realm: {REALM}, credentials: "
        f"{{username: {USERNAME}, password: {PASSWORD}}}}}\n"
        f"listeners: [{{name: udp, protocol: TURN-UDP, address: \"{host}\", port: {port}, "
        "routes: [peers]}]\n"
        f"clusters: [{{name: peers, type: STATIC, endpoints: [\"{peers}\"]}}]\n"
        # coturn 4.6 has no 401 rate limit; churn opens a new 5-tuple (and gets a 401) per
        # allocation from one IP, so relay's limit is off here as well.
        # turnutils_uclient (an RFC 5766 client) picks channel numbers up to 0x7FFF, which
        # RFC 8656 refuses; coturn accepts them, so relay does here too.
        f"turn: {{min_port: {min_port}, max_port: {max_port}, "
        # turn.workers always where the tree knows it (its default is every CPU), so a
        # benchmark runs what it says; never for trees from before the key (A/B)
        f"{'' if guard else 'unauthorized_ratelimit: 0, '}rfc5766_channels: true"
        f"{f', workers: {workers}' if workers_key else ''}"
        f"{'' if data_plane is None else f', data_plane: {data_plane}'}}}\n"
    )


def _spawn(name: str, cmd: list[str], address: tuple[str, int], workdir: str,
           env: dict[str, str] | None = None) -> ServerProcess:
    log_path = os.path.join(workdir, f"{name}.log")
    log = open(log_path, "wb")
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir, env=env,
                                preexec_fn=raise_nofile)
    finally:
        log.close()
    return ServerProcess(name=name, address=address, proc=proc, log_path=log_path, command=cmd)


@contextlib.contextmanager
def run_coturn(host: str = "127.0.0.1", port: int | None = None, *,
               port_range: tuple[int, int] | None = None, relay_threads: int = 1,
               extra: list[str] | None = None,
               ready_timeout: float = 15.0) -> Iterator[ServerProcess]:
    """Run coturn on loopback for the duration of the ``with`` block."""
    if not coturn_available():
        raise RuntimeError("coturn's turnserver is not installed (Debian: apt install coturn)")
    port = port or free_udp_port(host)
    lo, hi = port_range or random_port_range()
    with tempfile.TemporaryDirectory(prefix="relay-bench-coturn-") as tmp:
        cmd = coturn_command(host, port, lo, hi, relay_threads=relay_threads, extra=extra,
                             pidfile=os.path.join(tmp, "turnserver.pid"))
        server = _spawn("coturn", cmd, (host, port), tmp)
        try:
            wait_ready(server, ready_timeout)
            yield server
        finally:
            stop(server)


@contextlib.contextmanager
def run_relay(host: str = "127.0.0.1", port: int | None = None, *,
              port_range: tuple[int, int] | None = None, python: str | None = None,
              ready_timeout: float = 20.0, root: str | None = None,
              guard: bool = False, workers: int = 1,
              health_port: int = 0, data_plane: str | None = None) -> Iterator[ServerProcess]:
    """Run relay (``python -m relay -c CONFIG``) on loopback for the ``with`` block; from the
    source tree ``root`` (default: this checkout), e.g. a ``git worktree`` of another
    commit for an A/B comparison."""
    port = port or free_udp_port(host)
    lo, hi = port_range or random_port_range()
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="relay-bench-relay-") as tmp:
        cfg = os.path.join(tmp, "relay.yaml")
        with open(cfg, "w") as fh:
            knows_workers = os.path.exists(os.path.join(root, "relay", "net", "workers.py"))
            if workers != 1 and not knows_workers:
                raise ValueError(f"{root} has no TURN workers (turn.workers: {workers})")
            fh.write(relay_config_yaml(host, port, lo, hi, guard, workers=workers,
                                       health_port=health_port, workers_key=knows_workers,
                                       data_plane=data_plane))
        cmd = [python or sys.executable, "-m", "relay", "-c", cfg]
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        server = _spawn("relay", cmd, (host, port), tmp, env=env)
        try:
            wait_ready(server, ready_timeout)
            yield server
        finally:
            stop(server)
