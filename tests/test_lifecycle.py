"""Reload and drain in process, through `running.control` (relay.lifecycle): no signals.

Listeners added, removed (drained), credentials changed without cutting an allocation, a
bad file refused with its key named and the old config kept, TLS certificates re-read with
open connections kept, signaling backends re-keyed and removed, and the drain's refusals
and grace period.  The subprocess tests (real SIGHUP / SIGTERM) are in
tests/test_reload_drain_cli.py.
"""

from __future__ import annotations

import functools
import logging
import ssl
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.turnclient import TurnClient, TurnError
from relay import app
from relay.app import Running
from relay.config import Config
from relay.config.signaling import BackendConfig, SignalingConfig
from relay.lifecycle import Control
from relay.metrics.collector import TurnCollector
from relay.signaling.reload import reconfigure, say_goodbye
from tests.signaling.test_signaling_hub_timers import FakeBackend, FakeConn
from tests.turn.gateway_harness import (
    PASSWORD,
    REALM,
    RTO,
    USER,
    client,
    config,
    listener_address,
    running,
)
from tests.turn.stream_client import StreamTurnClient

CHAN = 0x4000
# the TURN reload and drain tests run on every datagram path (tests/conftest.py)
BOTH_PATHS = pytest.mark.usefixtures("datagram_io")
UDP = {"name": "udp", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
       "routes": ["peers"]}
UDP2 = {**UDP, "name": "udp2"}


def with_password(cfg: Config, password: str) -> Config:
    users = tuple(attrs.evolve(u, password=password) for u in cfg.auth.users)
    return attrs.evolve(cfg, auth=attrs.evolve(cfg.auth, users=users))


def control(rt: Running) -> Control:
    assert rt.control is not None
    return rt.control


def same_ports(rt: Running, cfg: Config) -> Config:
    """`cfg` with each listener's port 0 replaced by the port it took (as an operator who
    wrote the bound port back into the file would)."""
    ports = {n: s.port for n, s in rt.health.listeners.items()}
    return attrs.evolve(cfg, listeners=tuple(
        attrs.evolve(lis, port=ports.get(lis.name, lis.port)) for lis in cfg.listeners))


async def relays(c: TurnClient, payload: bytes, channel: int = CHAN,
                 wait: float = 2.0) -> bool:
    """Whether `payload` sent on `channel` comes back from the echo peer within `wait`."""
    await c.send_channel(channel, payload)
    with trio.move_on_after(wait):
        while True:
            kind, _meta, data = await c.recv(timeout=wait)
            if kind == "channel" and data == payload:
                return True
    return False


def reload_counts(rt: Running) -> dict[str, float]:
    collector = TurnCollector(rt.stats, rt.config, rt.health)
    fam = next(f for f in collector.collect() if f.name == "relay_config_reloads")
    return {s.labels["result"]: s.value for s in fam.samples if s.name.endswith("_total")}


# -- TURN: listeners and credentials -----------------------------------------------------


@BOTH_PATHS
async def test_added_listener_and_new_password_leave_the_allocation_running() -> None:
    cfg = config(listeners=[UDP])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with client(rt) as c:
                await c.allocate()
                await c.channel_bind(CHAN, peer)
                assert await relays(c, b"before")
                new = with_password(config(listeners=[UDP, UDP2]), "rotated-pw")
                assert control(rt).apply(same_ports(rt, new))
                assert rt.health.listeners["udp2"].bound and rt.health.ready()
                assert await relays(c, b"after")
                await c.refresh(600)  # signed with the key it allocated with
                # New allocations need the new password, on either listener.
                async with client(rt, "udp2") as stale:
                    with pytest.raises(TurnError) as err:
                        await stale.allocate()
                    assert err.value.code == 401
                async with client(rt, "udp2", password="rotated-pw") as fresh:
                    await fresh.allocate()
            nursery.cancel_scope.cancel()
    assert reload_counts(rt) == {"success": 1, "failure": 0}


@BOTH_PATHS
async def test_removed_listener_drains_then_closes() -> None:
    cfg = config(listeners=[UDP, UDP2])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            gw = control(rt).gateway
            assert gw is not None
            address2 = listener_address(rt, "udp2")
            async with client(rt, "udp2") as c:
                await c.allocate()
                await c.channel_bind(CHAN, peer)
                assert control(rt).apply(same_ports(rt, config(listeners=[UDP])))
                assert "udp2" not in rt.health.listeners and rt.health.ready()
                # No new allocation there; the existing one relays on.
                async with TurnClient(address2, USER, PASSWORD, rto=RTO) as late:
                    with pytest.raises(TurnError) as err:
                        await late.allocate()
                    assert err.value.code == 508
                assert await relays(c, b"still relayed")
                assert "udp2" in gw.listener_configs
                await c.refresh(0)  # its last allocation ends: the listener closes
                with trio.move_on_after(5.0):
                    while "udp2" in gw.listener_configs:  # noqa: ASYNC110 (the sweeper's)
                        await trio.sleep(0.05)
                assert "udp2" not in gw.listener_configs and "udp2" not in gw.sockets
            async with client(rt) as other:  # the listener that stayed is untouched
                await other.allocate()
            nursery.cancel_scope.cancel()


@BOTH_PATHS
async def test_a_re_bound_listener_serves_on_its_new_port() -> None:
    cfg = config(listeners=[UDP])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            old = listener_address(rt, "udp")
            async with client(rt) as c:
                await c.allocate()
                assert control(rt).apply(config(listeners=[UDP]))  # port 0 again: kept
                assert listener_address(rt, "udp") == old
                moved = config(listeners=[{**UDP, "address": "127.0.0.2"}])
                assert control(rt).apply(moved)  # a new socket; the allocation ended
                gw = control(rt).gateway
                assert gw is not None and gw.allocations == 0 and c.relayed is not None
            assert listener_address(rt, "udp")[0] == "127.0.0.2"
            async with client(rt) as fresh:  # relays through the new socket
                await fresh.allocate()
                await fresh.channel_bind(CHAN, peer)
                assert await relays(fresh, b"on the new socket")
            nursery.cancel_scope.cancel()


async def test_a_bad_file_is_refused_naming_the_key_and_the_old_config_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(
        "version: v1\n"
        f"auth: {{type: static, realm: {REALM}, "
        f"credentials: {{username: {USER}, password: {PASSWORD}}}}}\n"
        "turn: {max_lifetime: -5}\n")
    cfg = config(listeners=[UDP])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            rt: Running = await nursery.start(
                functools.partial(app.run, cfg, config_path=str(path)))
            with caplog.at_level(logging.ERROR, logger="relay"):
                assert not control(rt).reload()
            assert "turn.max_lifetime" in caplog.text and "the running config stays" in caplog.text
            # A port that is taken: the bind fails before anything changes.
            async with client(rt) as c:
                await c.allocate()
                taken = listener_address(rt)
                clash = {**UDP2, "port": taken[1]}
                assert not control(rt).apply(same_ports(rt, config(listeners=[UDP, clash])))
                assert "udp2" not in rt.health.listeners
                await c.refresh(600)
            assert control(rt).config is cfg
            nursery.cancel_scope.cancel()
    assert reload_counts(rt) == {"success": 0, "failure": 2}


# -- TLS: certificates re-read, open connections kept --------------------------------------


def issue(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_tls_certificate_is_re_read_and_open_connections_stay(tmp_path: Path) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert, key = issue(old_ca, tmp_path)
    tls: dict[str, Any] = {"name": "tls", "protocol": "TURN-TLS", "address": "127.0.0.1",
                           "port": 0, "routes": ["peers"], "cert": cert, "key": key}
    cfg = config(listeners=[tls])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            address = listener_address(rt, "tls")
            async with StreamTurnClient(address, USER, PASSWORD, tls=trusting(old_ca)) as c:
                await c.allocate()
                await c.channel_bind(CHAN, peer)
                issue(new_ca, tmp_path)  # the same files, a new certificate
                assert control(rt).apply(same_ports(rt, cfg))
                assert await relays(c, b"same connection")
                async with StreamTurnClient(address, USER, PASSWORD,
                                            tls=trusting(new_ca)) as fresh:
                    await fresh.allocate()
                with pytest.raises((ssl.SSLError, trio.BrokenResourceError)):
                    async with StreamTurnClient(address, USER, PASSWORD,
                                                tls=trusting(old_ca)) as stale:
                        await stale.allocate()
            nursery.cancel_scope.cancel()


# -- drain -----------------------------------------------------------------------------------


@BOTH_PATHS
async def test_drain_refuses_allocates_keeps_relaying_and_ends_with_the_last_allocation(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(listeners=[UDP])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            ctl = control(rt)
            async with client(rt) as c:
                await c.allocate()
                await c.channel_bind(CHAN, peer)
                with caplog.at_level(logging.INFO, logger="relay"):
                    ctl.begin_drain(grace=60)
                    assert not rt.health.ready()
                    async with client(rt) as late:
                        with pytest.raises(TurnError) as err:
                            await late.allocate()
                        assert err.value.code == 508
                    assert rt.stats.quota_rejections["draining"] == 1
                    done = trio.Event()

                    async def wait() -> None:
                        await ctl.wait_drained(grace=60)
                        done.set()

                    nursery.start_soon(wait)
                    assert await relays(c, b"while draining")
                    assert not done.is_set()
                    await c.refresh(0)
                    await done.wait()
            assert "draining: 1 allocation(s) keep relaying" in caplog.text
            assert "drained: 1 allocation(s) ended" in caplog.text
            nursery.cancel_scope.cancel()


@BOTH_PATHS
async def test_drain_cuts_what_is_left_when_the_grace_period_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(30):
        async with running(config(listeners=[UDP])) as rt, client(rt) as c:
            await c.allocate()
            with caplog.at_level(logging.INFO, logger="relay"):
                await control(rt).drain(grace=0.2)
            assert "grace period of 0.2s over, 1 of 1 allocation(s) cut" in caplog.text


# -- signaling backends ----------------------------------------------------------------------


A_URL = "https://a.example.com/"
B_URL = "https://b.example.com/"


def sig_config(a_secret: bytes, with_b: bool = True) -> SignalingConfig:
    backends = [BackendConfig("a", (A_URL,), a_secret)]
    if with_b:
        backends.append(BackendConfig("b", (B_URL,), b"b-secret"))
    return SignalingConfig(backends=tuple(backends))


async def hello_on(hub: Any, base: str, user: str) -> FakeConn:
    import json

    conn = FakeConn()
    hub.connect(conn)
    await hub.receive(conn, json.dumps({"id": "1", "type": "hello", "hello": {
        "version": "1.0", "auth": {"url": base + "ocs/v2.php/apps/spreed/api/v3/signaling/"
                                   "backend", "params": {"userid": user}}}}))
    msgs = conn.take()
    assert msgs[1]["type"] == "hello", msgs
    return conn


async def test_backend_re_keyed_and_removed_keeps_the_other_backends_sessions() -> None:
    from relay.signaling.hub import Hub

    hub = Hub(sig_config(b"a-secret"), FakeBackend(), version="test")
    conn_a = await hello_on(hub, A_URL, "ann")
    conn_b = await hello_on(hub, B_URL, "bob")
    assert len(hub.sessions) == 2
    changes = reconfigure(hub, sig_config(b"a-rotated"))
    assert changes == ["signaling backend a: re-keyed"]
    assert len(hub.sessions) == 2 and conn_a.closed is None and conn_b.closed is None
    by_backend = {s.backend.id: s for s in hub.sessions.values()}
    assert by_backend["a"].backend.secret == b"a-rotated"
    assert hub.backends.lookup(A_URL) == BackendConfig("a", (A_URL,), b"a-rotated")
    # Backend b removed: its session ends with bye; a's stays.
    changes = reconfigure(hub, sig_config(b"a-rotated", with_b=False))
    assert "signaling backend b: removed" in changes
    assert conn_b.sent[-1] == {"type": "bye", "bye": {"reason": "backend_removed"}}
    assert conn_b.closed is not None and conn_a.closed is None
    assert [s.backend.id for s in hub.sessions.values()] == ["a"]
    # A drain says bye to everyone left, and to anyone who connects after.
    assert say_goodbye(hub) == 1
    assert conn_a.sent[-1] == {"type": "bye", "bye": {"reason": "shutdown"}}
    late = FakeConn()
    hub.connect(late)
    assert late.sent[-1] == {"type": "bye", "bye": {"reason": "shutdown"}} and late.closed


@BOTH_PATHS
async def test_a_removed_listener_put_back_before_it_drained_serves_again() -> None:
    cfg = config(listeners=[UDP, UDP2])
    with trio.fail_after(30):
        async with running(cfg) as rt, client(rt, "udp2") as c:
            await c.allocate()
            full = same_ports(rt, cfg)
            assert control(rt).apply(attrs.evolve(full, listeners=full.listeners[:1]))
            assert control(rt).apply(full)
            assert rt.health.listeners["udp2"].bound
            await c.refresh(600)  # the same allocation, on the same socket
            async with client(rt, "udp2") as other:
                await other.allocate()  # no longer refused
