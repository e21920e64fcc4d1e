"""Listeners added, removed and re-bound by a reload (SIGHUP) with two TURN worker
processes, as the single process does them (docs/lifecycle.md):

- an added TURN-UDP listener serves in both workers (clients the kernel hashes to either
  allocate and relay on it), an added TURN-TCP listener accepts and relays;
- a removed listener drains: its allocations relay on in both workers, new Allocates there
  get 508, and once the last one is deleted its port is free again (no worker and not the
  supervisor holds it), while another listener relays through the reload with no loss;
- a listener put back before its drain ended keeps its sockets and allocations;
- a re-bound listener serves on its new port in both workers, the old port is released;
- a reload whose new port is taken is refused naming the key; every worker keeps the old
  config (the old secret allocates, the rotated one in the refused file does not);
- a worker restarted after a reload serves the listeners in force, not the removed ones.

relay runs in-process with its signal handling on; the workers are real processes.  Every
wait is bounded; no test asserts a duration.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.turnclient import TurnClient
from relay import app
from relay.app import Running
from relay.config import Config
from relay.net.workers import Workers
from tests.test_lifecycle import relays
from tests.test_reload_drain_cli import (
    NEW_SECRET,
    OLD_SECRET,
    PACKETS,
    assert_no_loss,
    credential,
    refused_allocate,
    relaying,
    stream,
)
from tests.turn.gateway_harness import free_port_range, until
from tests.turn.stream_client import StreamTurnClient

CLIENTS = 16  # new clients on a listener: the kernel spreads them over both workers
WAIT = 10.0  # for what the workers do on their own (reports, drains)


def udp(name: str, port: int = 0) -> dict[str, Any]:
    return {"name": name, "protocol": "TURN-UDP", "address": "127.0.0.1", "port": port,
            "routes": ["peers"]}


def raw_config(listeners: list[dict[str, Any]], ports: tuple[int, int],
               secret: str = OLD_SECRET) -> dict[str, Any]:
    return {
        "version": "v1",
        "admin": {"metrics_endpoint": "", "healthcheck_endpoint": "", "loglevel": "all:INFO"},
        "auth": {"type": "ephemeral", "realm": "reload.test",
                 "credentials": {"secret": secret}},
        "listeners": listeners,
        "clusters": [{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1/32"]}],
        "turn": {"workers": 2, "min_port": ports[0], "max_port": ports[1],
                 "unauthorized_ratelimit": 0},
    }


def write(path: Path, raw: dict[str, Any]) -> None:
    path.write_text(json.dumps(raw))


@asynccontextmanager
async def relay_with_workers(path: Path, raw: dict[str, Any]) -> AsyncIterator[Running]:
    """relay.app.run on the file `path` (written from `raw`), SIGHUP reloading it."""
    write(path, raw)
    cfg = Config.from_file(str(path))
    assert cfg.turn.workers == 2
    async with trio.open_nursery() as nursery:
        rt: Running = await nursery.start(functools.partial(
            app.run, cfg, config_path=str(path), handle_signals=True))
        try:
            yield rt
        finally:
            nursery.cancel_scope.cancel()


def workers(rt: Running) -> Workers:
    assert rt.control is not None and isinstance(rt.control.gateway, Workers)
    return rt.control.gateway


async def sighup(rt: Running, path: Path, raw: dict[str, Any]) -> bool:
    """Rewrite the file, SIGHUP; whether the reload was taken."""
    before = dict(rt.health.reloads)
    write(path, raw)
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: rt.health.reloads != before, "the reload", timeout=WAIT)
    return rt.health.reloads["success"] > before["success"]


async def sighup_while_streaming(c: TurnClient, rt: Running, path: Path,
                                 raw: dict[str, Any]) -> tuple[set[int], set[int], bool]:
    """`c`'s stream before, and through, a SIGHUP; whether the reload was taken."""
    before = await stream(c, 0, PACKETS)
    during: set[int] = set()
    async with trio.open_nursery() as inner:

        async def run_stream() -> None:
            during.update(await stream(c, PACKETS, PACKETS))

        inner.start_soon(run_stream)
        await trio.sleep(0.5)
        taken = await sighup(rt, path, raw)
    return before, during, taken


def per_worker(rt: Running) -> list[int]:
    return [w.allocations for w in rt.health.workers.values()]


async def settled(rt: Running, total: int) -> list[int]:
    """Allocations per worker once their reports add up to `total`."""
    await until(lambda: sum(per_worker(rt)) == total, f"{total} allocation(s) reported",
                timeout=WAIT)
    return per_worker(rt)


@asynccontextmanager
async def clients_on(port: int, peer: tuple[str, int], n: int = CLIENTS,
                     secret: str = OLD_SECRET) -> AsyncIterator[list[TurnClient]]:
    """`n` new clients of the listener on `port`, allocated, channel 0x4000 to `peer`,
    each relaying once."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for i in range(n):
            user, pw = credential(secret, f"c{i}")
            c = await stack.enter_async_context(
                TurnClient(("127.0.0.1", port), user, pw, rto=0.1))
            await c.allocate()
            await c.channel_bind(0x4000, peer)
            assert await relays(c, b"hello %d" % i), f"client {i} on {port} relays"
            out.append(c)
        yield out


def spread(after: list[int], before: list[int]) -> list[int]:
    return [a - b for a, b in zip(after, before, strict=True)]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, kind: int = socket.SOCK_DGRAM) -> bool:
    """Whether a plain socket (no SO_REUSEPORT) can bind `port` on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_sighup_adds_a_udp_listener_served_by_both_workers(tmp_path: Path) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    path = tmp_path / "relay.json"
    with trio.fail_after(90):
        async with relay_with_workers(path, raw_config([udp("udp-a")], ports)) as rt, \
                trio.open_nursery() as nursery:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            port_a = rt.health.listeners["udp-a"].port
            async with relaying(port_a) as (c, _echo):
                base = await settled(rt, 1)
                before, during, taken = await sighup_while_streaming(
                    c, rt, path, raw_config([udp("udp-a", port_a), udp("udp-b")], ports))
                assert taken
                assert_no_loss(before, during)
                b = rt.health.listeners["udp-b"]
                assert b.bound and b.port and b.port != port_a
                assert set(rt.health.listeners) == {"udp-a", "udp-b"}
                assert rt.health.ready()
                assert rt.control is not None and rt.control.turn_servers is not None
                assert rt.control.turn_servers.uris == (  # /turn/credentials' own URIs
                    f"turn:127.0.0.1:{port_a}?transport=udp",
                    f"turn:127.0.0.1:{b.port}?transport=udp")
                async with clients_on(b.port, peer):
                    got = spread(await settled(rt, 1 + CLIENTS), base)
                    assert all(n >= 1 for n in got), got  # both workers serve udp-b
                assert await relays(c, b"still here")
            nursery.cancel_scope.cancel()


async def test_sighup_adds_a_tcp_listener(tmp_path: Path) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    path = tmp_path / "relay.json"
    tcp = {"name": "tcp-b", "protocol": "TURN-TCP", "address": "127.0.0.1", "port": 0,
           "routes": ["peers"]}
    with trio.fail_after(90):
        async with relay_with_workers(path, raw_config([udp("udp-a")], ports)) as rt, \
                trio.open_nursery() as nursery:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            port_a = rt.health.listeners["udp-a"].port
            assert await sighup(rt, path, raw_config([udp("udp-a", port_a), tcp], ports))
            b = rt.health.listeners["tcp-b"]
            assert b.bound and b.protocol == "TURN-TCP" and b.port
            async with contextlib.AsyncExitStack() as stack:
                for i in range(4):
                    user, pw = credential(OLD_SECRET, f"t{i}")
                    c = await stack.enter_async_context(
                        StreamTurnClient(("127.0.0.1", b.port), user, pw))
                    await c.allocate()
                    await c.channel_bind(0x4000, peer)
                    assert await relays(c, b"tcp %d" % i)
                await settled(rt, 4)
            await settled(rt, 0)  # gone with their connections
            nursery.cancel_scope.cancel()


async def test_sighup_removes_a_listener_it_drains_in_both_workers(tmp_path: Path) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    path = tmp_path / "relay.json"
    with trio.fail_after(120):
        async with relay_with_workers(path, raw_config([udp("udp-a"), udp("udp-b")],
                                                       ports)) as rt, \
                trio.open_nursery() as nursery:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            port_a = rt.health.listeners["udp-a"].port
            port_b = rt.health.listeners["udp-b"].port
            async with relaying(port_a) as (c, _echo):
                base = await settled(rt, 1)
                async with clients_on(port_b, peer) as on_b:
                    got = spread(await settled(rt, 1 + CLIENTS), base)
                    assert all(n >= 1 for n in got), got  # udp-b's clients on both workers
                    before, during, taken = await sighup_while_streaming(
                        c, rt, path, raw_config([udp("udp-a", port_a)], ports))
                    assert taken
                    assert_no_loss(before, during)
                    assert set(rt.health.listeners) == {"udp-a"}
                    assert "udp-b" in workers(rt).retiring
                    # udp-b drains: its allocations relay on, in both workers, and it
                    # refuses new ones (508) whichever worker a client lands on
                    for i, old in enumerate(on_b):
                        assert await relays(old, b"draining %d" % i), i
                        await old.refresh(600)
                    refused = [await refused_allocate(port_b, OLD_SECRET, f"late{i}")
                               for i in range(8)]
                    assert refused == [508] * 8
                    assert not port_is_free(port_b)
                    for old in on_b:
                        await old.refresh(0)  # the clients delete their allocations
                    await until(lambda: "udp-b" not in workers(rt).retiring,
                                "udp-b closed in every worker", timeout=WAIT)
                    assert port_is_free(port_b)  # nobody holds it any more
                assert await relays(c, b"a relays on")
            nursery.cancel_scope.cancel()


async def test_sighup_re_binds_a_listener_to_another_port(tmp_path: Path) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    path = tmp_path / "relay.json"
    with trio.fail_after(90):
        async with relay_with_workers(path, raw_config([udp("udp-a")], ports)) as rt, \
                trio.open_nursery() as nursery:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            old_port = rt.health.listeners["udp-a"].port
            async with clients_on(old_port, peer, 4):
                await settled(rt, 4)
                new_port = free_udp_port()
                assert await sighup(rt, path, raw_config([udp("udp-a", new_port)], ports))
                assert rt.health.listeners["udp-a"].port == new_port
                # as in one process: the old socket's allocations end, its port is free
                await settled(rt, 0)
                assert port_is_free(old_port)
                async with clients_on(new_port, peer):
                    got = await settled(rt, CLIENTS)
                    assert all(n >= 1 for n in got), got  # both workers serve the new port
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("change", ["added", "re-bound"])
async def test_a_reload_whose_port_is_taken_is_refused_and_every_worker_keeps_the_old_config(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    path = tmp_path / "relay.json"
    caplog.set_level(logging.INFO, logger="relay")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker, trio.fail_after(90):
        blocker.bind(("127.0.0.1", 0))
        taken_port = blocker.getsockname()[1]
        async with relay_with_workers(path, raw_config([udp("udp-a")], ports)) as rt, \
                trio.open_nursery() as nursery:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            port_a = rt.health.listeners["udp-a"].port
            if change == "added":
                listeners, key = [udp("udp-a", port_a), udp("udp-b", taken_port)], \
                    "listeners[1].port"
            else:
                listeners, key = [udp("udp-a", taken_port)], "listeners[0].port"
            async with relaying(port_a) as (c, _echo):
                base = await settled(rt, 1)
                # the refused file also rotates the secret: no worker may take it
                before, during, taken = await sighup_while_streaming(
                    c, rt, path, raw_config(listeners, ports, secret=NEW_SECRET))
                assert not taken
                assert_no_loss(before, during)
                refusal = [r.getMessage() for r in caplog.records
                           if "reload refused" in r.getMessage()]
                assert len(refusal) == 1 and key in refusal[0] and "udp" in refusal[0], \
                    refusal
                assert set(rt.health.listeners) == {"udp-a"}
                assert rt.health.listeners["udp-a"].port == port_a
                assert set(workers(rt).groups) == {"udp-a"}
                assert await refused_allocate(port_a, NEW_SECRET, "rotated") == 401
                async with clients_on(port_a, peer):  # the old secret, on both workers
                    got = spread(await settled(rt, 1 + CLIENTS), base)
                    assert all(n >= 1 for n in got), got
            nursery.cancel_scope.cancel()


async def test_a_listener_put_back_before_it_drained_keeps_its_sockets(tmp_path: Path) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    path = tmp_path / "relay.json"
    with trio.fail_after(90):
        async with relay_with_workers(path, raw_config([udp("udp-a"), udp("udp-b")],
                                                       ports)) as rt, \
                trio.open_nursery() as nursery:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            port_a = rt.health.listeners["udp-a"].port
            port_b = rt.health.listeners["udp-b"].port
            group = workers(rt).groups["udp-b"]
            async with clients_on(port_b, peer, 4) as on_b:
                base = await settled(rt, 4)
                assert await sighup(rt, path, raw_config([udp("udp-a", port_a)], ports))
                assert workers(rt).retiring == {"udp-b": group}
                assert await sighup(rt, path, raw_config(
                    [udp("udp-a", port_a), udp("udp-b", port_b)], ports))
                assert workers(rt).groups["udp-b"] is group and not workers(rt).retiring
                assert rt.health.listeners["udp-b"].bound
                for i, old in enumerate(on_b):  # the same sockets: nothing was cut
                    assert await relays(old, b"back %d" % i), i
                async with clients_on(port_b, peer):  # new ones allocate (no 508)
                    got = spread(await settled(rt, 4 + CLIENTS), base)
                    assert all(n >= 1 for n in got), got  # in both workers
            nursery.cancel_scope.cancel()


async def test_a_worker_restarted_after_a_reload_serves_the_reloaded_listeners(
        tmp_path: Path) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    path = tmp_path / "relay.json"
    with trio.fail_after(90):
        async with relay_with_workers(path, raw_config([udp("udp-a")], ports)) as rt, \
                trio.open_nursery() as nursery:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            port_a = rt.health.listeners["udp-a"].port
            # udp-b added, udp-a removed (nothing to drain: closed in both workers)
            assert await sighup(rt, path, raw_config([udp("udp-b")], ports))
            port_b = rt.health.listeners["udp-b"].port
            await until(lambda: not workers(rt).retiring, "udp-a closed", timeout=WAIT)
            victim = rt.health.workers[0]
            os.kill(victim.pid or 0, signal.SIGKILL)
            await until(lambda: victim.up and victim.restarts == 1, "worker 0 restarted",
                        timeout=WAIT)
            assert port_is_free(port_a)  # the restarted worker did not get udp-a back
            async with clients_on(port_b, peer):  # udp-b in the restarted worker too
                got = await settled(rt, CLIENTS)
                assert all(n >= 1 for n in got), got
            nursery.cancel_scope.cancel()
