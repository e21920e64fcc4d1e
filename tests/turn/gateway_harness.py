"""What the gateway tests share: configs on loopback, relay run in-process, small helpers.

relay runs inside the test's Trio run (`relay.app.run` in a nursery), so a test can read
`running.stats` directly; listeners and admin endpoints bind port 0 and the relay port
range is a small range found free on both loopback addresses.
"""

from __future__ import annotations

import inspect
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from benchmarks.turnclient import TurnClient
from relay import app
from relay.app import Running
from relay.config import Config
from relay.stun import Message, MessageClass, Method

USER = "alice"
PASSWORD = "alice-pw"
REALM = "gw.test"
RTO = 0.1  # client retransmission timeout: loopback answers in well under a millisecond
# turn.data_plane and turn.batch_io of the configs below when the test does not set them
# (the `datagram_io` fixture runs a test on each datagram path); None: the defaults
DATA_PATH: list[dict[str, object] | None] = [None]


def _bindable(host: str, port: int) -> bool:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((host, port))
    except OSError:
        return False
    return True


HAS_IPV6 = _bindable("::1", 0)
LOOPBACKS = ("127.0.0.1", "::1") if HAS_IPV6 else ("127.0.0.1",)
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback (::1) on this machine")


def free_port_range(size: int, hosts: tuple[str, ...] = LOOPBACKS) -> tuple[int, int]:
    """`size` consecutive UDP ports free on every host a moment ago, below the kernel's
    ephemeral range (where port-0 sockets of the tests themselves land)."""
    for _ in range(200):
        lo = random.randrange(20000, 32000 - size)
        if all(_bindable(h, p) for p in range(lo, lo + size) for h in hosts):
            return lo, lo + size - 1
    raise RuntimeError(f"no {size} consecutive free UDP ports found")


def config(
    *,
    listeners: list[dict[str, Any]] | None = None,
    clusters: list[dict[str, Any]] | None = None,
    turn: dict[str, Any] | None = None,
    admin: dict[str, Any] | None = None,
    ports: int = 16,
) -> Config:
    """A config with one TURN-UDP listener on 127.0.0.1 port 0 routed to `peers`
    (127.0.0.1/32 unless `clusters` says otherwise), admin endpoints off, a static user."""
    lo, hi = free_port_range(ports)
    raw: dict[str, Any] = {
        "version": "v1",
        "admin": {"metrics_endpoint": "", "healthcheck_endpoint": "", "loglevel": "all:WARN",
                  **(admin or {})},
        "auth": {"type": "static", "realm": REALM,
                 "credentials": {"username": USER, "password": PASSWORD}},
        "listeners": listeners if listeners is not None else [
            {"name": "udp", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
             "routes": ["peers"]},
        ],
        "clusters": clusters if clusters is not None else [
            {"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1/32"]},
        ],
        # one process unless the test asks for workers (tests/net/test_workers.py)
        "turn": {"min_port": lo, "max_port": hi, "workers": 1, **(turn or {})},
    }
    for key, value in (DATA_PATH[0] or {}).items():
        raw["turn"].setdefault(key, value)
    return Config.from_mapping(raw)


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[Running]:
    """relay.app.run in a nursery for the duration of the block; cancelled on the way out."""
    async with trio.open_nursery() as nursery:
        started: Running = await nursery.start(app.run, cfg)
        try:
            yield started
        finally:
            nursery.cancel_scope.cancel()


def listener_address(runtime: Running, name: str = "udp") -> tuple[str, int]:
    st = runtime.health.listeners[name]
    assert st.bound and st.port
    return st.address, st.port


def client(runtime: Running, name: str = "udp", *, password: str = PASSWORD,
           bind: str | None = None) -> TurnClient:
    return TurnClient(listener_address(runtime, name), USER, password, rto=RTO, bind=bind)


async def roundtrip(c: TurnClient, send: Callable[[], Awaitable[None]], kind: str,
                    payload: bytes, tries: int = 5) -> Any:
    """Send until `payload` comes back as `kind` ("channel" or "data"); the item's meta
    (channel number or peer address).  UDP on loopback: retries are a formality."""
    for _ in range(tries):
        await send()
        with trio.move_on_after(0.5):
            while True:
                got_kind, meta, data = await c.recv(timeout=0.5)
                if got_kind == kind and data == payload:
                    return meta
    raise AssertionError(f"no {kind} echo of {payload[:16]!r} after {tries} tries")


async def binding(c: TurnClient) -> None:
    """A Binding round trip: the server has handled everything this client sent before."""
    await c.binding()


def binding_request() -> tuple[bytes, bytes]:
    tid = os.urandom(12)
    return Message(method=Method.BINDING, cls=MessageClass.REQUEST,
                   transaction_id=tid).encode(), tid


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Wait for a condition the relay reaches on its own (another task's counter)."""
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 (the condition is another task's counter)
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def deliver(send: Callable[[], object], done: Callable[[], bool],
                  what: str, tries: int = 5) -> None:
    """Send a datagram until the relay shows it has seen it (`done`): UDP may drop a large
    datagram under memory pressure from other processes, so a single send is not a test."""
    for _ in range(tries):
        sent = send()
        if inspect.isawaitable(sent):
            await sent
        with trio.move_on_after(1.0):
            while not done():  # noqa: ASYNC110 (the condition is another task's counter)
                await trio.sleep(0.01)
            return
    raise AssertionError(f"{what}: not seen after {tries} sends")


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def udp_sink(host: str = "127.0.0.1") -> socket.socket:
    """A bound non-blocking UDP socket a test reads with `drain`."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out
