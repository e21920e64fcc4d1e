"""relay out of file descriptors, as the operator meets it: `python -m relay` started with
RLIMIT_NOFILE 1024 (soft and hard), 1,050 clients allocating and then 1,050 idle TCP
connects to TURN-TCP (and more to signaling).

relay must hold what it can, answer 508 to the Allocates it cannot serve, close the
connections it cannot hold, go on relaying for the allocations it has, keep `/ready`
answering and never exit.  Every wait is bounded; no duration is asserted."""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from benchmarks.turnclient import TurnClient, TurnError
from tests.test_cli import ROOT, Running, _env
from tests.turn.gateway_harness import free_port_range

LIMIT = 1024
ALLOCATIONS = 1050
CONNECTS = 1050
SIGNALING_CONNECTS = 200
TIMEOUT = 120.0

CONFIG = """\
version: v1
admin: {{metrics_endpoint: "http://127.0.0.1:0/metrics", healthcheck_endpoint: "http://127.0.0.1:0",
        loglevel: "all:INFO"}}
auth: {{type: static, realm: fd.test, credentials: {{username: u, password: p}}}}
listeners:
  - {{name: udp, protocol: TURN-UDP, address: 127.0.0.1, port: 0, routes: [peers]}}
  - {{name: tcp, protocol: TURN-TCP, address: 127.0.0.1, port: 0, routes: [peers]}}
clusters:
  - {{name: peers, type: STATIC, endpoints: [127.0.0.1/32]}}
# one process: the limit, its reserve and the counts asserted are that process's own (each
# TURN worker keeps its own reserve, docs/workers.md)
turn: {{workers: 1, min_port: {lo}, max_port: {hi}, max_connections_per_ip: 2000}}
signaling:
  http: {{listen: "127.0.0.1:0", max_connections_per_ip: 2000}}
  backend: {{allowall: true, secret: fd-test-secret}}
"""


def _limit_fds() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _port(out: str, pattern: str) -> int:
    m = re.search(pattern, out, re.MULTILINE)
    assert m is not None, (pattern, out)
    return int(m.group(1))


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # loopback only
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _echo(sock: trio.socket.SocketType) -> None:
    while True:
        data, addr = await sock.recvfrom(2048)
        await sock.sendto(data, addr)


async def _exercise(udp: tuple[str, int], tcp: tuple[str, int], sig: tuple[str, int],
                    health: str) -> dict[str, int]:
    out = {"allocated": 0, "508": 0, "other": 0, "relayed": 0, "tcp_closed": 0,
           "sig_closed": 0}
    clients: list[TurnClient] = []
    held: list[TurnClient] = []
    limiter = trio.CapacityLimiter(64)

    async def allocate(c: TurnClient) -> None:
        async with limiter:
            try:
                await c.allocate(timeout=20.0)
            except TurnError as exc:
                out["508" if exc.code == 508 else "other"] += 1
                return
            out["allocated"] += 1
            held.append(c)

    with trio.fail_after(TIMEOUT):
        try:
            for _ in range(ALLOCATIONS):
                c = TurnClient(udp, "u", "p", rto=0.5)
                await c.__aenter__()
                clients.append(c)
            async with trio.open_nursery() as nursery:
                for c in clients:
                    nursery.start_soon(allocate, c)

            # Idle TCP connects: relay has no descriptor to spare for them; it must close
            # them (or hold them), never stop accepting or die.
            conns: list[socket.socket] = []
            try:
                for target, n in ((tcp, CONNECTS), (sig, SIGNALING_CONNECTS)):
                    for _ in range(n):
                        s = socket.socket()
                        s.setblocking(False)
                        try:
                            s.connect(target)
                        except BlockingIOError:
                            pass
                        conns.append(s)
                        if len(conns) % 50 == 0:
                            await trio.lowlevel.checkpoint()
                await trio.sleep(1.0)  # let relay's accept loops work through the backlog
                for i, s in enumerate(conns):
                    key = "tcp_closed" if i < CONNECTS else "sig_closed"
                    try:
                        if s.recv(1) == b"":
                            out[key] += 1
                    except BlockingIOError:
                        pass  # still open (held)
                    except OSError:
                        out[key] += 1  # reset
            finally:
                for s in conns:
                    s.close()

            # relay still relays for the allocations it holds.
            peer = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await peer.bind(("127.0.0.1", 0))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_echo, peer)
                for c in held[:: max(1, len(held) // 20)]:
                    await c.create_permission(peer.getsockname(), timeout=10.0)
                    payload = os.urandom(16)
                    for _ in range(5):
                        await c.send_indication(peer.getsockname(), payload)
                        with trio.move_on_after(1.0):
                            kind, _meta, data = await c.recv(timeout=1.0)
                            if kind == "data" and data == payload:
                                out["relayed"] += 1
                                break
                nursery.cancel_scope.cancel()
            peer.close()
            out["ready"], _ = await trio.to_thread.run_sync(_get, f"{health}/ready")
        finally:
            for c in clients:
                c.close()
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux descriptor semantics")
def test_relay_under_rlimit_1024_refuses_what_it_cannot_hold_and_goes_on(
        tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = ALLOCATIONS + CONNECTS + SIGNALING_CONNECTS + 256
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the test itself needs {need} descriptors (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    lo, hi = free_port_range(ALLOCATIONS + 50, ("127.0.0.1",))
    path = tmp_path / "relay.yaml"
    path.write_text(CONFIG.format(lo=lo, hi=hi))
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "-c", str(path)], cwd=ROOT, env=_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=_limit_fds,
    )
    try:
        r = Running.__new__(Running)
        r.proc, r.out = proc, b""
        out = r.read_until(b"relay is ready")
        udp = ("127.0.0.1", _port(out, r"^listener udp: TURN-UDP on 127\.0\.0\.1:(\d+)$"))
        tcp = ("127.0.0.1", _port(out, r"^listener tcp: TURN-TCP on 127\.0\.0\.1:(\d+)$"))
        sig = ("127.0.0.1", _port(out, r"^signaling: ws://127\.0\.0\.1:(\d+)/spreed$"))
        health_port = _port(out, r"^health: http://127\.0\.0\.1:(\d+)/live")
        metrics_port = _port(out, r"^metrics: http://127\.0\.0\.1:(\d+)/metrics")
        health = f"http://127.0.0.1:{health_port}"
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"

        got = trio.run(_exercise, udp, tcp, sig, health)
        print("under RLIMIT_NOFILE", LIMIT, ":", got)

        assert proc.poll() is None, "relay exited"
        # Some allocations were held, the rest refused with 508, none failed otherwise.
        assert got["allocated"] > 0 and got["508"] > 0, got
        assert got["allocated"] + got["508"] == ALLOCATIONS, got
        assert got["other"] == 0, got
        assert got["allocated"] < LIMIT
        # It relayed for every sampled allocation it holds, and /ready still answers.
        assert got["relayed"] == len(range(0, got["allocated"], max(1, got["allocated"] // 20)))
        assert got["ready"] == 200, got
        # The connections it had no descriptor for were closed, not left hanging.
        assert got["tcp_closed"] > 0 and got["sig_closed"] > 0, got
        status, text = _get(f"{metrics}")
        assert status == 200
        exhausted = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^relay_fd_exhausted_total\{where="(\w+)"\} (\S+)$', text, re.MULTILINE)}
        assert exhausted["relay_socket"] >= got["508"], exhausted
        assert exhausted["turn_accept"] > 0 and exhausted["signaling_accept"] > 0, exhausted
        # relay answers a new Allocate (508) and a Binding after all that.
        more = trio.run(_one_more, udp)
        assert more == 508
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    text = err.decode()
    assert "Traceback" not in text, text[-4000:]
    assert "cannot start" not in text
    # Refusals are logged at most once a second, not once per refusal.
    assert text.count("out of file descriptors") < 200, text.count("out of file descriptors")
    assert "file descriptors: soft limit 1024 -> 1024 (hard limit 1024)" in text


async def _one_more(udp: tuple[str, int]) -> int:
    with trio.fail_after(30):
        async with TurnClient(udp, "u", "p", rto=0.5) as c:
            await c.binding()
            try:
                await c.allocate(timeout=10.0)
            except TurnError as exc:
                return exc.code
            return 0
