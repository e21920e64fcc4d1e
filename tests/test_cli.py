"""The command line, as an operator runs it: `python -m relay` in a subprocess.

Help and version, the embedded default config round trip, config errors (exit 2, the key
named, no traceback), and a real start on port 0 that answers STUN and stops on SIGTERM and
SIGINT with exit 0.  Every subprocess runs under a timeout; no test asserts a duration.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from benchmarks.turnclient import TurnClient
from relay import __version__
from tests.turn.gateway_harness import free_port_range

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0  # per subprocess: generous, only there so a hang fails instead of blocking

LISTENER_LINE = re.compile(r"^listener (\S+): TURN-UDP on (\S+):(\d+)$", re.MULTILINE)

MINIMAL = """\
version: v1
admin: {{metrics_endpoint: "{metrics}", healthcheck_endpoint: "", loglevel: "all:INFO"}}
auth: {{type: static, realm: cli.test, credentials: {{username: u, password: p}}}}
listeners:
  - {{name: udp-cli, protocol: TURN-UDP, address: 127.0.0.1, port: {port}, routes: [peers]}}
clusters:
  - {{name: peers, type: STATIC, endpoints: [127.0.0.1/32]}}
turn: {{min_port: {lo}, max_port: {hi}}}
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def relay(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=_env(),
                          stdin=subprocess.DEVNULL)


def minimal(port: int = 0, metrics: str = "") -> str:
    lo, hi = free_port_range(8, ("127.0.0.1",))
    return MINIMAL.format(port=port, metrics=metrics, lo=lo, hi=hi)


def write(tmp_path: Path, text: str, name: str = "relay.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def assert_config_error(proc: subprocess.CompletedProcess[str], key: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert key in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# -- one-shot commands ---------------------------------------------------------------------


def test_help_prints_usage_and_exits_0() -> None:
    proc = relay("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m relay")
    for flag in ("-c FILE", "--check-config", "--print-default-config", "--version"):
        assert flag in proc.stdout


def test_version() -> None:
    proc = relay("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"relay {__version__}"


def test_default_config_round_trips_through_check_config(tmp_path: Path) -> None:
    printed = relay("--print-default-config")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("#") and "version: v1" in printed.stdout
    path = write(tmp_path, printed.stdout)
    checked = relay("-c", path, "--check-config")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("configuration OK: 1 listener(s), 1 cluster(s), auth static")
    # The same summary as for the embedded default itself.
    assert relay("--check-config").stdout == checked.stdout


@pytest.mark.parametrize(("change", "key"), [
    (("port: 0", "port: 70000"), "listeners[0].port"),
    (("port: 0", "port: -1"), "listeners[0].port"),
    (("port: 0", "port: many"), "listeners[0].port"),
    (("address: 127.0.0.1", "address: not-an-ip"), "listeners[0].address"),
    (("routes: [peers]", "routes: [nowhere]"), "listeners[0].routes[0]"),
    (("{min_port: ", "{min_port: 0, unused_min: "), "turn.min_port"),
    (("endpoints: [127.0.0.1/32]", "endpoints: [300.0.0.1/32]"), "clusters[0].endpoints[0]"),
    (("type: static", "type: magic"), "auth.type"),
    (("loglevel: \"all:INFO\"", "loglevel: \"all:LOUD\""), "admin.loglevel"),
])
def test_bad_values_exit_2_naming_the_key(tmp_path: Path, change: tuple[str, str],
                                          key: str) -> None:
    text = minimal()
    assert change[0] in text
    path = write(tmp_path, text.replace(change[0], change[1], 1))
    assert_config_error(relay("-c", path, "--check-config"), key)
    # Starting with it fails the same way, before anything is bound.
    assert_config_error(relay("-c", path), key)


def test_unknown_keys_and_other_versions_are_refused(tmp_path: Path) -> None:
    text = minimal()
    path = write(tmp_path, text.replace("version: v1", "version: v2"))
    proc = relay("-c", path, "--check-config")
    assert_config_error(proc, "version")
    assert "v2" in proc.stderr

    path = write(tmp_path, text + "tunr: {min_port: 1}\n")
    assert_config_error(relay("-c", path, "--check-config"), "tunr")

    path = write(tmp_path, "version: v1\nlisteners: [\n")
    assert_config_error(relay("-c", path, "--check-config"), path)

    missing = str(tmp_path / "absent.yaml")
    assert_config_error(relay("-c", missing, "--check-config"), missing)


# -- a running relay -----------------------------------------------------------------------


class Running:
    """`python -m relay -c FILE` with its stdout read line by line under a deadline."""

    def __init__(self, config_path: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "-c", config_path, *args], cwd=ROOT, env=_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.out = b""
        self.err = b""

    def read_until(self, marker: bytes, timeout: float = TIMEOUT) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while marker not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} in time; stdout so far:\n{self.out!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"relay exited before {marker!r}:\n{self.out!r}\n{err!r}")
                self.out += chunk
        return self.out.decode()

    def read_err_until(self, marker: bytes, timeout: float = TIMEOUT) -> str:
        """stderr (the log) up to `marker`; kept, so `stop` returns all of it."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while marker not in self.err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} in time; stderr so far:\n{self.err!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"relay exited before {marker!r}:\n{self.err!r}")
                self.err += chunk
        return self.err.decode()

    def stop(self, signum: int) -> tuple[int, str]:
        self.proc.send_signal(signum)
        return self.wait(f"relay did not stop on {signal.Signals(signum).name}")

    def wait(self, problem: str = "relay did not exit") -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(problem) from None
        return self.proc.returncode, (self.err + err).decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def stun_binding(address: tuple[str, int]) -> tuple[str, int]:
    """Our address as the server reports it in a Binding response."""
    from relay.stun import Message, MessageClass, Method, XorMappedAddress, decode

    tid = os.urandom(12)
    req = Message(method=Method.BINDING, cls=MessageClass.REQUEST, transaction_id=tid).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(1.0)
        for _ in range(5):
            s.sendto(req, address)
            try:
                data, _ = s.recvfrom(2048)
            except TimeoutError:
                continue
            msg = decode(data)
            assert msg.transaction_id == tid and msg.cls == MessageClass.SUCCESS
            xma = msg.get(XorMappedAddress)
            assert xma is not None
            return xma.ip, xma.port
    raise AssertionError(f"no Binding answer from {address}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_starts_on_port_0_prints_the_listener_and_stops_on_signal(tmp_path: Path,
                                                                  signum: int) -> None:
    path = write(tmp_path, minimal(metrics="http://127.0.0.1:0/metrics"))
    r = Running(path)
    try:
        out = r.read_until(b"relay is ready")
        m = LISTENER_LINE.search(out)
        assert m is not None, out
        name, host, port = m.group(1), m.group(2), int(m.group(3))
        assert (name, host) == ("udp-cli", "127.0.0.1") and port != 0
        metrics = re.search(r"^metrics: http://127\.0\.0\.1:(\d+)/metrics$", out, re.MULTILINE)
        assert metrics is not None and int(metrics.group(1)) != 0, out
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            mine = probe.getsockname()
        assert stun_binding((host, port))[0] == mine[0]
        # An allocation with a channel is alive when the signal comes.
        relayed = trio.run(allocate, (host, port))
        if signum == signal.SIGTERM:
            # SIGTERM drains (the allocation would keep relay up for the grace period);
            # a SIGINT after it stops relay at once.
            r.proc.send_signal(signal.SIGTERM)
            r.read_err_until(b"draining: 1 allocation(s) keep relaying")
            rc, err = r.stop(signal.SIGINT)
            signum = signal.SIGINT
        else:
            rc, err = r.stop(signum)
    finally:
        r.kill()
    assert rc == 0, err
    assert "Traceback" not in err
    assert f"received {signal.Signals(signum).name}, shutting down" in err
    # Everything was released: the listener and relay ports can be bound again.
    for address in ((host, port), relayed):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(address)


async def allocate(server: tuple[str, int]) -> tuple[str, int]:
    with trio.fail_after(TIMEOUT):
        async with TurnClient(server, "u", "p", rto=0.1) as c:
            await c.allocate()
            await c.channel_bind(0x4000, ("127.0.0.1", 9))
            assert c.relayed is not None
            return c.relayed


def test_a_port_in_use_fails_to_start_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        path = write(tmp_path, minimal(port))
        proc = relay("-c", path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "udp-cli" in proc.stderr
    assert "relay is ready" not in proc.stdout
