"""Reload and drain as an operator does them: `python -m relay -c FILE`, real signals.

- SIGHUP with a rewritten file that adds a listener and rotates the shared secret: an
  allocation relaying a steady packet stream through a channel loses no packet, the new
  listener serves with the new secret, the old secret is refused for new allocations.
- SIGTERM: `/ready` is 503 at once, a new Allocate is refused with 508, the allocation keeps
  relaying until the client deletes it, then relay exits 0 and says what it drained.
- `--watch`: a changed file is applied without a signal.

The SIGHUP and `--watch` tests run on the default `turn.workers` (a worker per CPU: the
supervisor binds the added listener and hands it to the workers); the SIGTERM test pins one
process, whose drain counts are exact at once.

Every subprocess and every wait is bounded; no test asserts a duration.
"""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from benchmarks.turnclient import TurnClient, TurnError
from relay.turn.auth import rest_password
from tests.test_cli import TIMEOUT, Running, stun_binding, write
from tests.turn.gateway_harness import free_port_range

CONFIG = """\
version: v1
admin: {{metrics_endpoint: "", healthcheck_endpoint: "{health}", loglevel: "all:INFO"}}
auth:
  type: ephemeral
  realm: reload.test
  credentials: {{secret: {secret}}}
listeners:
{listeners}
clusters:
  - {{name: peers, type: STATIC, endpoints: [127.0.0.1/32]}}
turn: {{min_port: {lo}, max_port: {hi}}}
"""
LISTENER = ("  - {{name: {name}, protocol: TURN-UDP, address: 127.0.0.1, port: {port}, "
            "routes: [peers]}}")
OLD_SECRET = "old-shared-secret"
NEW_SECRET = "new-shared-secret"
PACKETS = 300  # per stream phase
GAP = 0.005  # between packets: a steady stream, well below what loopback carries


def render(secret: str, listeners: list[tuple[str, int]], ports: tuple[int, int],
           health: str = "") -> str:
    body = "\n".join(LISTENER.format(name=n, port=p) for n, p in listeners)
    return CONFIG.format(secret=secret, listeners=body, lo=ports[0], hi=ports[1],
                         health=health)


def one_process(text: str) -> str:
    """A rendered config pinned to one process (`turn.workers: 1`)."""
    return text.replace("turn: {min_port:", "turn: {workers: 1, min_port:")


def credential(secret: str, user: str = "alice") -> tuple[str, str]:
    username = f"{int(time.time()) + 3600}:{user}"
    return username, rest_password(secret, username)


def listener_port(out: str, name: str) -> int:
    m = re.search(rf"^listener {name}: TURN-UDP on 127\.0\.0\.1:(\d+)$", out, re.MULTILINE)
    assert m is not None, out
    return int(m.group(1))


class Echo:
    """A peer that answers every datagram with the same bytes, counting what it saw."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.seen = 0

    async def bind(self) -> tuple[str, int]:
        await self.sock.bind(("127.0.0.1", 0))
        host, port = self.sock.getsockname()
        return host, port

    async def run(self) -> None:
        while True:
            data, addr = await self.sock.recvfrom(2048)
            self.seen += 1
            await self.sock.sendto(data, addr)


@asynccontextmanager
async def relaying(port: int) -> AsyncIterator[tuple[TurnClient, Echo]]:
    """A client of the listener on `port` (OLD_SECRET), allocated, with channel 0x4000
    bound to a running echo peer."""
    echo = Echo()
    peer = await echo.bind()
    user, pw = credential(OLD_SECRET)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo.run)
        async with TurnClient(("127.0.0.1", port), user, pw, rto=0.1) as c:
            await c.allocate()
            await c.channel_bind(0x4000, peer)
            yield c, echo
        nursery.cancel_scope.cancel()


async def refused_allocate(port: int, secret: str, user: str) -> int:
    """The error code a new client's Allocate on `port` gets (it must fail)."""
    username, pw = credential(secret, user)
    async with TurnClient(("127.0.0.1", port), username, pw, rto=0.1) as c:
        with pytest.raises(TurnError) as err:
            await c.allocate()
    return err.value.code


async def drain_while_relaying(r: Running, c: TurnClient, port: int, ready_url: str,
                               late: int = 1) -> tuple[set[int], int, list[int]]:
    """SIGTERM to `r` while `c` holds an allocation: /ready's status during the drain, the
    codes `late` new clients' Allocates get, and what `c` relays after; then `c` deletes
    its allocation (relay must still be running until then)."""
    r.proc.send_signal(signal.SIGTERM)
    await trio.to_thread.run_sync(r.read_err_until, b"draining: 1 alloc")
    ready = await trio.to_thread.run_sync(_ready_status, ready_url)
    # New Allocates are refused while the old allocation relays on.
    refused = [await refused_allocate(port, OLD_SECRET, f"late{i}") for i in range(late)]
    after = await stream(c, 0, PACKETS)
    assert r.proc.poll() is None  # still up: the allocation is alive
    await c.refresh(0)  # the client deletes its allocation
    return after, ready, refused


async def stream(c: TurnClient, start: int, count: int) -> set[int]:
    """Send `count` numbered packets on channel 0x4000 at a steady pace while collecting the
    echoes; the sequence numbers that came back."""
    got: set[int] = set()

    async def receive() -> None:
        while len(got) < count:
            kind, _meta, payload = await c.recv(timeout=TIMEOUT)
            if kind == "channel":
                seq = int.from_bytes(payload[:4], "big")
                if start <= seq < start + count:
                    got.add(seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        for seq in range(start, start + count):
            await c.send_channel(0x4000, seq.to_bytes(4, "big") + b"m" * 160)
            await trio.sleep(GAP)
        with trio.move_on_after(5.0):  # the last echoes are in flight; a loss ends it here
            while len(got) < count:  # noqa: ASYNC110 (the receiver task fills `got`)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return got


def test_sighup_adds_a_listener_and_rotates_the_secret_without_losing_a_packet(
        tmp_path: Path) -> None:
    ports = free_port_range(16, ("127.0.0.1",))
    path = write(tmp_path, render(OLD_SECRET, [("udp-a", 0)], ports))
    r = Running(path)
    try:
        out = r.read_until(b"relay is ready")
        port_a = listener_port(out, "udp-a")

        async def scenario() -> tuple[set[int], set[int], int, str]:
            with trio.fail_after(60):
                async with relaying(port_a) as (c, echo):
                    before = await stream(c, 0, PACKETS)
                    # Rewrite the file: a second listener, the secret rotated (the old
                    # one gone), then SIGHUP while the stream runs.
                    write(tmp_path, render(NEW_SECRET, [("udp-a", port_a), ("udp-b", 0)],
                                           ports))
                    async with trio.open_nursery() as inner:
                        during: set[int] = set()

                        async def run_stream() -> None:
                            during.update(await stream(c, PACKETS, PACKETS))

                        inner.start_soon(run_stream)
                        await trio.sleep(PACKETS * GAP / 3)
                        r.proc.send_signal(signal.SIGHUP)
                        log = await trio.to_thread.run_sync(
                            r.read_err_until, b"config reloaded")
                    # The allocation's own refresh still authenticates (its key is kept).
                    await c.refresh(600)
                    port_b = int(re.search(
                        r"listener udp-b: TURN-UDP on 127\.0\.0\.1:(\d+)", log).group(1))
                    # A new client: the old secret is refused, the new one allocates on
                    # the added listener.
                    assert await refused_allocate(port_b, OLD_SECRET, "bob") == 401
                    new_user, new_pw = credential(NEW_SECRET, "bob")
                    async with TurnClient(("127.0.0.1", port_b), new_user, new_pw,
                                          rto=0.1) as fresh:
                        await fresh.allocate()
                        assert fresh.relayed is not None
            return before, during, echo.seen, log

        before, during, seen, log = trio.run(scenario)
        rc, err = r.stop(signal.SIGINT)
    finally:
        r.kill()
    assert_no_loss(before, during)
    assert seen == 2 * PACKETS
    assert "received SIGHUP, reloading" in log
    assert rc == 0 and "Traceback" not in err, err


def assert_no_loss(before: set[int], during: set[int]) -> None:
    """Both stream phases (before and through the reload) came back whole."""
    assert before == set(range(PACKETS))
    assert during == set(range(PACKETS, 2 * PACKETS)), (
        f"lost {sorted(set(range(PACKETS, 2 * PACKETS)) - during)[:10]}...")


def _ready_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_sigterm_drains_relaying_continues_until_the_allocation_is_deleted_then_exit_0(
        tmp_path: Path) -> None:
    ports = free_port_range(16, ("127.0.0.1",))
    # One process: the drain's counts in the log are exact at once (a supervisor's count of
    # its workers' allocations is up to 0.25 s old; tests/net/test_workers_lifecycle.py
    # drains two workers).
    path = write(tmp_path, one_process(render(OLD_SECRET, [("udp-a", 0)], ports,
                                              health="http://127.0.0.1:0")))
    r = Running(path)
    try:
        out = r.read_until(b"relay is ready")
        port_a = listener_port(out, "udp-a")
        m = re.search(r"^health: http://127\.0\.0\.1:(\d+)/live", out, re.MULTILINE)
        assert m is not None, out
        ready_url = f"http://127.0.0.1:{m.group(1)}/ready"

        async def scenario() -> tuple[set[int], int, list[int]]:
            with trio.fail_after(60):
                async with relaying(port_a) as (c, _echo):
                    for _ in range(50):  # the self-probe's first verdict may be pending
                        if await trio.to_thread.run_sync(_ready_status, ready_url) == 200:
                            break
                        await trio.sleep(0.1)
                    return await drain_while_relaying(r, c, port_a, ready_url)

        after, ready, refused = trio.run(scenario)
        rc, err = r.wait("relay did not exit once its last allocation was deleted")
    finally:
        r.kill()
    assert ready == 503
    assert refused == [508]
    assert after == set(range(PACKETS))
    assert rc == 0, err
    assert "drained: 1 allocation(s) ended" in err
    assert "Traceback" not in err


def test_watch_applies_a_changed_file_without_a_signal(tmp_path: Path) -> None:
    ports = free_port_range(16, ("127.0.0.1",))
    path = write(tmp_path, render(OLD_SECRET, [("udp-a", 0)], ports))
    r = Running(path, "--watch")
    try:
        out = r.read_until(b"relay is ready")
        port_a = listener_port(out, "udp-a")
        write(tmp_path, render(OLD_SECRET, [("udp-a", port_a)], ports).replace(
            "all:INFO", "all:INFO,gateway:DEBUG") + "shutdown: {grace_period: 5}\n")
        log = r.read_err_until(b"config reloaded")
        write(tmp_path, render(OLD_SECRET, [("udp-a", port_a)], ports).replace(
            f"min_port: {ports[0]}", "min_port: 70000"))
        log = r.read_err_until(b"reload refused")
        # The old config is still in force: the listener answers.
        assert stun_binding(("127.0.0.1", port_a))[0] == "127.0.0.1"
        rc, err = r.stop(signal.SIGTERM)  # no allocation: the drain ends at once
    finally:
        r.kill()
    assert "changed, reloading" in log
    assert "turn.min_port" in log  # the refused file's key is named
    assert rc == 0 and "Traceback" not in err, err
