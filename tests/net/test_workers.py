"""turn.workers > 1: TURN gateways in worker processes behind one set of listener ports.

Real worker processes on loopback (relay.app.run in the test's Trio run supervises them):
traffic relayed through both workers and summed into the one set of counters; a worker
killed with SIGKILL loses only its own allocations while the other keeps relaying with no
loss, and comes back; the quotas hold for the whole server; the pieces (port slices, the
401 share, the shared quota ledger, the config key) on their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.turnclient import TurnClient, TurnError
from relay.app import Running
from relay.config import (
    DEMO_PASSWORD,
    DEMO_USERNAME,
    Config,
    ConfigError,
    TurnConfig,
    default_config,
    usable_cpus,
)
from relay.net.shared_quota import SharedQuota
from relay.net.workers import port_slices, worker_config
from relay.turn.policy import PeerPolicy
from relay.turn.server import TurnServer
from relay.turn.stats import TurnStats
from tests.test_cli import LISTENER_LINE, MINIMAL, relay, write
from tests.test_cli import Running as CliRunning
from tests.test_lifecycle import relays
from tests.turn.gateway_harness import PASSWORD, USER, client, config, running, until
from tests.turn.stream_client import StreamTurnClient

CLIENTS = 16


def _config(**turn: object) -> object:
    return config(turn={"workers": 2, "unauthorized_ratelimit": 0, **turn}, ports=64)


async def _echo(c: TurnClient, channel: int, payload: bytes) -> bool:
    return await relays(c, payload, channel, wait=0.5)


@asynccontextmanager
async def _allocated(rt: Running, peer: tuple[str, int]) -> AsyncIterator[list[TurnClient]]:
    """CLIENTS clients, each allocated with channel 0x4000 bound to `peer`."""
    clients = [client(rt) for _ in range(CLIENTS)]
    try:
        for c in clients:
            await c.__aenter__()
            await c.allocate()
            await c.channel_bind(0x4000, peer)
        yield clients
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)


async def test_sigkill_of_one_worker_loses_only_its_allocations() -> None:
    cfg = _config()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, running(cfg) as rt:  # type: ignore[arg-type]
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            workers = rt.health.workers
            assert sorted(workers) == [0, 1] and all(w.up for w in workers.values())
            async with _allocated(rt, peer) as clients:
                for i, c in enumerate(clients):
                    assert await _echo(c, 0x4000, b"before %d" % i)
                await until(lambda: rt.stats.allocations_active == CLIENTS,
                            "both workers' reports summed")
                per_worker = [w.allocations for w in workers.values()]
                assert sum(per_worker) == CLIENTS

                victim = workers[0]
                os.kill(victim.pid or 0, signal.SIGKILL)
                await until(lambda: not victim.up, "the supervisor seeing worker 0 gone")
                assert not rt.health.ready()

                # while worker 0 is down and after: each client relays all or nothing
                survivors, lost = [], []
                for i, c in enumerate(clients):
                    echoed = [await _echo(c, 0x4000, b"during %d %d" % (i, k)) for k in range(5)]
                    assert all(echoed) or not any(echoed), f"client {i}: partial loss {echoed}"
                    (survivors if all(echoed) else lost).append(c)
                assert len(survivors) == per_worker[1] and len(lost) == per_worker[0]

                await until(lambda: victim.up and victim.restarts == 1, "worker 0 restarted",
                            timeout=20)
                await until(rt.health.ready, "ready again")
                for c in survivors:
                    await c.refresh(300)
                    for k in range(20):  # the survivors keep relaying with no loss
                        assert await _echo(c, 0x4000, b"after %d" % k)
                for c in lost:
                    with pytest.raises(TurnError) as info:
                        await c.refresh(300)
                    assert info.value.code == 437
                await until(lambda: rt.stats.allocations_active == len(survivors),
                            "the lost allocations gone from the summed gauge")
                # a client of the restarted worker starts over and relays again
                if lost:
                    again = lost[0]
                    await again.new_port()
                    await again.allocate()
                    await again.channel_bind(0x4001, peer)
                    assert await _echo(again, 0x4001, b"new allocation")
            nursery.cancel_scope.cancel()


async def test_counters_of_both_workers_are_summed() -> None:
    cfg = _config()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, running(cfg) as rt:  # type: ignore[arg-type]
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with _allocated(rt, peer) as clients:
                for c in clients:
                    assert await _echo(c, 0x4000, b"one")
                await until(lambda: all(w.allocations for w in rt.health.workers.values()),
                            "allocations on both workers")
                await until(lambda: rt.stats.allocations_total == CLIENTS
                            and rt.stats.clusters["peers"].traffic.tx_packets >= CLIENTS,
                            "both workers' counters in the summed stats")
                assert rt.stats.requests[("allocate", "success")] == CLIENTS
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("quota", ["total", "user"])
async def test_quotas_hold_across_workers(quota: str) -> None:
    limit = 3
    cfg = _config(total_quota=limit) if quota == "total" else _config()
    if quota == "user":
        cfg = attrs.evolve(cfg, admin=attrs.evolve(cfg.admin, user_quota=limit))  # type: ignore[attr-defined]
    with trio.fail_after(60):
        async with running(cfg) as rt:  # type: ignore[arg-type]
            clients = [client(rt) for _ in range(CLIENTS)]
            for c in clients:
                await c.__aenter__()
            try:
                granted, refused = [], []
                for c in clients:
                    try:
                        await c.allocate()
                        granted.append(c)
                    except TurnError as exc:
                        assert exc.code == (508 if quota == "total" else 486)
                        refused.append(c)
                assert len(granted) == limit
                # one ends: exactly one more fits, wherever it lands
                await granted[0].refresh(0)
                more = 0
                for c in refused:
                    try:
                        await c.allocate()
                        more += 1
                    except TurnError:
                        pass
                assert more == 1
            finally:
                for c in clients:
                    await c.__aexit__(None, None, None)


def test_port_slices_are_disjoint_and_cover_the_range() -> None:
    for lo, hi, n in [(49152, 65535, 2), (20000, 20063, 3), (30000, 30001, 1), (100, 107, 4)]:
        slices = port_slices(lo, hi, n)
        ports = [p for a, b in slices for p in range(a, b + 1)]
        assert ports == list(range(lo, hi + 1))
        assert all(b - a + 1 >= (hi - lo + 1) // n for a, b in slices)


def test_each_worker_gets_its_slice_and_a_share_of_the_401_guard() -> None:
    cfg = config(turn={"workers": 3, "unauthorized_ratelimit": 10, "unauthorized_burst": 400},
                 ports=30)
    parts = [worker_config(cfg, i, 3).turn for i in range(3)]
    assert [t.workers for t in parts] == [1, 1, 1]
    assert parts[0].min_port == cfg.turn.min_port and parts[-1].max_port == cfg.turn.max_port
    # each worker's core takes a third of the rate and of the burst: never above the whole
    limiters = [TurnServer(worker_config(cfg, i, 3), TurnStats(), PeerPolicy.from_config(cfg),
                           None, share=3).challenge_limiter for i in range(3)]  # type: ignore[arg-type]
    assert all(lim is not None for lim in limiters)
    assert sum(lim.rate for lim in limiters if lim) <= 10
    assert sum(lim.burst for lim in limiters if lim) <= 400
    assert all(lim.burst == 133 for lim in limiters if lim)


def test_each_worker_gets_a_slice_of_a_listeners_own_relay_range() -> None:
    cfg = config(turn={"workers": 2}, ports=64)
    lis = attrs.evolve(cfg.listeners[0], min_relay_port=40000, max_relay_port=40099)
    cfg = attrs.evolve(cfg, listeners=(lis,))
    ranges = [worker_config(cfg, i, 2).listeners[0].relay_port_range(
        worker_config(cfg, i, 2).turn) for i in range(2)]
    assert ranges == [(40000, 40049), (40050, 40099)]


def test_workers_config_key() -> None:
    assert config().turn.workers == 1  # the harness pins one process
    # 0: one per usable CPU, at most one per two relay ports (16 here)
    assert config(turn={"workers": 0}).turn.workers == min(usable_cpus(), 8)
    assert config(turn={"workers": 0}, ports=2).turn.workers == 1
    with pytest.raises(ConfigError, match=r"turn\.workers"):
        config(turn={"workers": 8}, ports=8)
    with pytest.raises(ConfigError, match=r"turn\.workers"):
        config(turn={"workers": -1})


def test_a_config_without_turn_workers_runs_one_worker_per_usable_cpu() -> None:
    assert TurnConfig().workers == usable_cpus()
    assert default_config().turn.workers == usable_cpus()  # 49152-65535: room for all
    text = MINIMAL.format(port=0, metrics="", lo=40000, hi=40999)
    assert "workers" not in text
    assert Config.from_text(text).turn.workers == usable_cpus()
    # a range too small for one worker per CPU gets as many as it has room for
    assert Config.from_text(MINIMAL.format(port=0, metrics="", lo=40000, hi=40001)
                            ).turn.workers == 1


def test_a_listener_range_too_small_for_the_workers() -> None:
    # Each worker takes a slice of a listener's own relay range too: the default shrinks
    # to what the range holds (two ports per worker); a number asked for is refused, by key.
    def raw(workers: int | None) -> dict[str, Any]:
        turn: dict[str, Any] = {"min_port": 40000, "max_port": 40999}
        if workers is not None:
            turn["workers"] = workers
        return {"version": "v1",
                "auth": {"type": "static", "realm": "r",
                         "credentials": {"username": "u", "password": "p"}},
                "listeners": [{"name": "udp", "protocol": "TURN-UDP", "address": "127.0.0.1",
                               "port": 0, "routes": ["c"], "min_relay_port": 41000,
                               "max_relay_port": 41002}],
                "clusters": [{"name": "c", "type": "STATIC", "endpoints": ["127.0.0.1"]}],
                "turn": turn}
    assert Config.from_mapping(raw(None)).turn.workers == 1
    assert Config.from_mapping(raw(0)).turn.workers == 1
    assert Config.from_mapping(raw(1)).turn.workers == 1
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.min_relay_port: .*41000-41002 "
                                          r"has 3 port\(s\): too few for turn\.workers 2"):
        Config.from_mapping(raw(2))


def _default_on_free_ports() -> str:
    """The embedded default configuration (`--print-default-config`) with its fixed ports
    (3478, 8080, 8086) set to 0: they may be taken on a machine running tests."""
    text = relay("--print-default-config").stdout
    for fixed, free in (("port: 3478", "port: 0"), ("127.0.0.1:8080/", "127.0.0.1:0/"),
                        ("http://127.0.0.1:8086", "http://127.0.0.1:0")):
        assert fixed in text
        text = text.replace(fixed, free)
    assert "workers" not in text
    return text


def test_the_embedded_default_starts_a_worker_per_cpu_and_relays(tmp_path: Path) -> None:
    r = CliRunning(write(tmp_path, _default_on_free_ports()))
    try:
        out = r.read_until(b"relay is ready")
        m = LISTENER_LINE.search(out)
        assert m is not None and m.group(1) == "udp-listener", out
        server = (m.group(2), int(m.group(3)))
        health = re.search(r"^health: http://127\.0\.0\.1:(\d+)/live", out, re.MULTILINE)
        assert health is not None, out

        def status() -> dict[str, Any]:
            url = f"http://127.0.0.1:{health.group(1)}/status"
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
            return doc

        async def scenario() -> tuple[dict[str, Any], bool]:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
                    async with TurnClient(server, DEMO_USERNAME, DEMO_PASSWORD) as c:
                        await c.allocate()
                        await c.channel_bind(0x4000, peer)
                        ok = await _echo(c, 0x4000, b"default")
                        await trio.sleep(0.6)  # the workers' next reports
                        doc = await trio.to_thread.run_sync(status)
                    nursery.cancel_scope.cancel()
            return doc, ok

        doc, ok = trio.run(scenario)
        rc, err = r.stop(signal.SIGINT)
    finally:
        r.kill()
    assert ok
    assert doc["allocations"] == 1
    if usable_cpus() > 1:
        workers = doc["workers"]
        assert len(workers) == usable_cpus() and all(w["up"] for w in workers), workers
        assert sum(w["allocations"] for w in workers) == 1
    else:  # one CPU: one process
        assert "workers" not in doc
    assert rc == 0 and "Traceback" not in err, err


def test_shared_quota_ledger_counts_over_every_row() -> None:
    table = SharedQuota.create(2)
    try:
        a = SharedQuota(table.fd, 2, 0)
        b = SharedQuota(table.fd, 2, 1)
        assert a.reserve("alice", 2, 3) is None
        assert b.reserve("alice", 2, 3) is None
        assert a.reserve("alice", 2, 3) == "user"  # alice has 2, counted in both rows
        assert b.reserve("bob", 2, 3) is None
        assert a.reserve("carol", 2, 3) == "total"
        assert table.total() == 3 and table.user_count("alice") == 2
        b.release("alice")
        assert a.reserve("alice", 2, 3) is None
        table.clear_row(0)  # worker 0 is gone with its allocations
        assert table.total() == 1 and table.user_count("alice") == 0
        a.close()
        b.close()
    finally:
        table.close()
        os.close(table.fd)


async def test_tcp_connections_are_served_by_the_workers() -> None:
    cfg = config(listeners=[
        {"name": "tcp", "protocol": "TURN-TCP", "address": "127.0.0.1", "port": 0,
         "routes": ["peers"]},
        {"name": "udp", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
         "routes": ["peers"]},
    ], turn={"workers": 2, "unauthorized_ratelimit": 0}, ports=64)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            address = rt.health.listeners["tcp"]
            for i in range(4):
                async with StreamTurnClient((address.address, address.port), USER,
                                            PASSWORD) as c:
                    await c.allocate()
                    await c.channel_bind(0x4000, peer)
                    payload = b"tcp %d" % i
                    await c.send_channel(0x4000, payload)
                    while True:
                        kind, meta, data = await c.recv(timeout=5)
                        if kind == "channel":
                            assert (meta, data) == (0x4000, payload)
                            break
            await until(lambda: rt.stats.allocations_total == 4
                        and rt.stats.allocations_active == 0,
                        "the TCP allocations counted and gone with their connections")
            nursery.cancel_scope.cancel()
