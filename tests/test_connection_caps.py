"""The per-source-IP connection caps of the TURN-TCP listener and the signaling
(WebSocket) listener, through relay as it runs: the connection over the cap is closed at
accept, the ones under it are served, and the refusal is counted."""

from __future__ import annotations

import socket

import attrs
import trio

from relay import app
from relay.config import Config
from relay.fdlimit import GUARD
from tests.turn.gateway_harness import config, listener_address

TCP = [{"name": "tcp", "protocol": "TURN-TCP", "address": "127.0.0.1", "port": 0,
        "routes": ["peers"]}]


async def _open(target: tuple[str, int]) -> trio.SocketStream | None:
    s = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await s.connect(target)
    except ConnectionResetError:
        s.close()
        return None
    return trio.SocketStream(s)


async def _closed(stream: trio.SocketStream | None, wait: float) -> bool:
    if stream is None:
        return True
    with trio.move_on_after(wait):
        try:
            return await stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True
    return False  # still open: served


async def _check_cap(target: tuple[str, int], where: str, cap: int) -> None:
    before = GUARD.capped[where]
    streams = [await _open(target) for _ in range(cap)]
    over = await _open(target)
    assert await _closed(over, 5.0)
    assert GUARD.capped[where] == before + 1
    for s in streams:  # the ones under the cap are served (nothing closes them)
        assert not await _closed(s, 0.3)
    for s in [*streams, over]:
        if s is not None:
            await s.aclose()


async def test_turn_tcp_and_signaling_cap_connections_per_source_ip() -> None:
    sig = Config.from_mapping({
        "version": "v1", "auth": {"type": "none"},
        "admin": {"metrics_endpoint": "", "healthcheck_endpoint": ""},
        "signaling": {"http": {"listen": "127.0.0.1:0", "max_connections_per_ip": 2},
                      "backend": {"allowall": True, "secret": "x"}},
        "stats": {"trusted_proxies": []}})
    cfg = attrs.evolve(config(listeners=TCP, turn={"max_connections_per_ip": 3}),
                       signaling=sig.signaling, stats=sig.stats)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(app.run, cfg)
            await _check_cap(listener_address(running, "tcp"), "turn_accept", 3)
            await _check_cap(running.http["signaling"], "signaling_accept", 2)
            nursery.cancel_scope.cancel()


async def test_a_trusted_proxy_is_not_capped_on_the_signaling_listener() -> None:
    # Behind a reverse proxy every client arrives from the proxy's address.
    cfg = Config.from_mapping({
        "version": "v1", "auth": {"type": "none"},
        "admin": {"metrics_endpoint": "", "healthcheck_endpoint": ""},
        "signaling": {"http": {"listen": "127.0.0.1:0", "max_connections_per_ip": 2},
                      "backend": {"allowall": True, "secret": "x"}},
        "stats": {"trusted_proxies": ["127.0.0.1/32"]}})
    before = GUARD.capped["signaling_accept"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running = await nursery.start(app.run, cfg)
            streams = [await _open(running.http["signaling"]) for _ in range(5)]
            for s in streams:
                assert not await _closed(s, 0.3)
            for s in streams:
                if s is not None:
                    await s.aclose()
            nursery.cancel_scope.cancel()
    assert GUARD.capped["signaling_accept"] == before
