"""/ready flips (starting, listeners bound, shutdown, wedged media path) and the self-probe."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from relay.config import Config
from relay.health import HealthState, ListenerStatus
from relay.net import probe
from relay.stun import (
    Message,
    MessageClass,
    Method,
    XorMappedAddress,
    decode,
    has_fingerprint,
    verify_fingerprint,
)


def success(tid: bytes, ip: str, port: int, **kw: Any) -> bytes:
    return Message(Method.BINDING, MessageClass.SUCCESS, tid,
                   [XorMappedAddress(ip, port)]).encode(**kw)


class FakeStunListener:
    """A UDP socket on 127.0.0.1 that answers Binding requests while `answering` is set."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.answering = True
        self.requests = 0
        self.wrong_tid = False

    async def bind(self) -> int:
        await self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    async def serve(self) -> None:
        while True:
            data, addr = await self.sock.recvfrom(2048)
            self.requests += 1
            if not self.answering or len(data) < 20:
                continue
            req = decode(data)
            tid = os.urandom(12) if self.wrong_tid else req.transaction_id
            if req.method == Method.BINDING and req.cls == MessageClass.REQUEST:
                await self.sock.sendto(success(tid, addr[0], addr[1]), addr)


async def fake_listener(nursery: trio.Nursery) -> tuple[FakeStunListener, int]:
    fake = FakeStunListener()
    port = await fake.bind()
    nursery.start_soon(fake.serve)
    return fake, port


async def wait_for(cond: Callable[[], bool], what: str) -> None:
    with trio.fail_after(10):
        while not cond():  # noqa: ASYNC110  (the state is plain attributes, polled)
            await trio.sleep(0.02)
    assert cond(), what


async def ready_status(url: str) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        return (await client.get(url)).status_code


# -- wire helpers ---------------------------------------------------------------------------


def test_binding_request_wire_format() -> None:
    tid = bytes(range(12))
    req = probe.binding_request(tid)
    assert req[:8] == b"\x00\x01\x00\x08\x21\x12\xa4\x42" and req[8:20] == tid
    msg = decode(req)
    assert (msg.method, msg.cls, msg.transaction_id) == (Method.BINDING,
                                                         MessageClass.REQUEST, tid)
    assert has_fingerprint(msg) and verify_fingerprint(msg)
    with pytest.raises(ValueError):
        probe.binding_request(b"short")


def test_is_binding_success_checks_the_answer() -> None:
    tid = os.urandom(12)
    ok = success(tid, "127.0.0.1", 40000)
    assert probe.is_binding_success(ok, tid)
    assert probe.is_binding_success(ok, tid, 40000)
    assert probe.is_binding_success(success(tid, "127.0.0.1", 40000, fingerprint=True), tid,
                                    40000)
    assert not probe.is_binding_success(ok, tid, 40001)  # not our mapping
    assert not probe.is_binding_success(ok, os.urandom(12))
    assert not probe.is_binding_success(ok[:19], tid)
    assert not probe.is_binding_success(b"\xff" * 40, tid)
    bare = Message(Method.BINDING, MessageClass.SUCCESS, tid).encode()
    assert not probe.is_binding_success(bare, tid)  # no XOR-MAPPED-ADDRESS
    err = Message(Method.BINDING, MessageClass.ERROR, tid, [XorMappedAddress("127.0.0.1", 1)])
    assert not probe.is_binding_success(err.encode(), tid)
    alloc = Message(Method.ALLOCATE, MessageClass.SUCCESS, tid,
                    [XorMappedAddress("127.0.0.1", 1)])
    assert not probe.is_binding_success(alloc.encode(), tid)
    fp = bytearray(success(tid, "127.0.0.1", 40000, fingerprint=True))
    fp[-1] ^= 1  # a corrupted FINGERPRINT
    assert not probe.is_binding_success(bytes(fp), tid, 40000)


def test_probe_target_maps_wildcards_to_loopback() -> None:
    assert probe.probe_target(ListenerStatus("a", "TURN-UDP", "0.0.0.0", 3478)) == (
        "127.0.0.1", 3478)
    assert probe.probe_target(ListenerStatus("a", "TURN-UDP", "::", 3478)) == ("::1", 3478)
    assert probe.probe_target(ListenerStatus("a", "TURN-UDP", "127.0.0.1", 9)) == (
        "127.0.0.1", 9)


def test_record_round_needs_consecutive_failures_and_recovers() -> None:
    h = HealthState()
    probe.record_round(h, False, 3)
    probe.record_round(h, False, 3)
    assert h.probe_ok and h.probe_failures == 2
    probe.record_round(h, True, 3)  # one success resets the streak
    assert h.probe_failures == 0
    for _ in range(3):
        probe.record_round(h, False, 3)
    assert not h.probe_ok
    probe.record_round(h, True, 3)
    assert h.probe_ok and h.probe_failures == 0


# -- probing real sockets -------------------------------------------------------------------


async def test_probe_round_against_answering_and_silent_sockets(nursery: trio.Nursery) -> None:
    fake, port = await fake_listener(nursery)
    h = HealthState()
    h.listeners["a"] = ListenerStatus("a", "TURN-UDP", "0.0.0.0", port, bound=True)
    with trio.fail_after(10):
        assert await probe.probe_round(h, 1.0)
        assert fake.requests == 1
        fake.answering = False
        assert not await probe.probe_round(h, 0.2)
        fake.answering = True
        fake.wrong_tid = True  # an answer to someone else's transaction does not count
        assert not await probe.probe_round(h, 0.2)


async def test_probe_skips_unbound_and_non_udp_listeners() -> None:
    h = HealthState()
    h.listeners["tcp"] = ListenerStatus("tcp", "TURN-TCP", "127.0.0.1", 1, bound=True)
    h.listeners["unbound"] = ListenerStatus("unbound", "TURN-UDP", "127.0.0.1", 1, bound=False)
    with trio.fail_after(5):
        assert await probe.probe_round(h, 0.2)


async def test_probe_to_closed_port_fails() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = HealthState()
    h.listeners["a"] = ListenerStatus("a", "TURN-UDP", "127.0.0.1", port, bound=True)
    with trio.fail_after(5):
        assert not await probe.probe_round(h, 0.3)


# -- /ready over HTTP ---------------------------------------------------------------------------


async def test_ready_flips_with_binding_and_shutdown(
    start_admin: Any, make_config: Callable[..., Config], nursery: trio.Nursery
) -> None:
    adm = await start_admin(make_config(), probe_interval=0.05, probe_timeout=0.5)
    url = adm.url("health", "/ready")
    h = adm.runtime.health
    assert await ready_status(url) == 503  # not started
    h.started = True
    assert await ready_status(url) == 503  # listeners not bound yet
    async with httpx.AsyncClient(trust_env=False) as client:
        reasons = (await client.get(url)).json()["reasons"]
    assert "listener udp-a not bound" in reasons
    fakes = []
    for st in h.listeners.values():
        fake, port = await fake_listener(nursery)
        fakes.append(fake)
        st.port, st.bound = port, True
        if st.name == "udp-a":
            assert await ready_status(url) == 503  # udp-b still unbound
    assert await ready_status(url) == 200
    # The probe runs against the bound listeners and keeps it ready.
    await wait_for(lambda: all(f.requests >= 2 for f in fakes), "probe reached every listener")
    assert h.probe_ok
    assert await ready_status(url) == 200
    h.shutting_down = True
    assert await ready_status(url) == 503
    # /live stays 200 while the process serves.
    assert await ready_status(adm.url("health", "/live")) == 200


async def test_ready_fails_when_media_path_is_wedged_and_recovers(
    start_admin: Any, make_config: Callable[..., Config], nursery: trio.Nursery
) -> None:
    adm = await start_admin(make_config(), probe_interval=0.05, probe_timeout=0.2,
                            probe_failures=2)
    url = adm.url("health", "/ready")
    h = adm.runtime.health
    fake_a, port_a = await fake_listener(nursery)
    # udp-b "binds" a socket that never answers: a wedged drain loop.
    silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await silent.bind(("127.0.0.1", 0))
    h.listeners["udp-a"].port, h.listeners["udp-a"].bound = port_a, True
    h.listeners["udp-b"].port = silent.getsockname()[1]
    h.listeners["udp-b"].bound = True
    h.started = True
    await wait_for(lambda: not h.probe_ok, "probe noticed the silent listener")
    assert await ready_status(url) == 503
    async with httpx.AsyncClient(trust_env=False) as client:
        assert "self-probe failing" in (await client.get(url)).json()["reasons"]
    # The listener answers again: readiness comes back.
    fake_b = FakeStunListener()
    fake_b.sock.close()
    fake_b.sock = silent
    nursery.start_soon(fake_b.serve)
    await wait_for(lambda: h.probe_ok, "probe saw the listener answer again")
    assert await ready_status(url) == 200
    assert fake_a.requests >= 2
