"""Over a real WebSocket: a drain says `bye` (reason `shutdown`) and sends a close frame
(1000) to every client, and a client connecting during the drain gets the same; a reload
that re-keys the backend keeps the session connected."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import trio
import trio_websocket

from relay.config import Config
from relay.runtime import Runtime
from relay.signaling.hub import Hub
from relay.signaling.reload import reconfigure, say_goodbye
from relay.signaling.server import serve_signaling
from tests.signaling.conftest import Client, Server, signaling_config


async def start(nursery: trio.Nursery, nextcloud: Any) -> tuple[Server, Hub]:
    cfg = Config.from_mapping(signaling_config(nextcloud))
    runtime = Runtime(cfg)
    hubs: list[Hub] = []
    host, port = await nursery.start(functools.partial(serve_signaling, runtime, hubs.append))
    srv = Server(runtime, host, port, nextcloud)
    srv._nursery = nursery
    return srv, hubs[0]


async def closed_with(c: Client) -> tuple[dict[str, Any], int | None]:
    bye = await c.recv_until(lambda m: m["type"] == "bye")
    with trio.fail_after(5):
        try:
            while True:
                await c.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return bye, exc.reason.code


async def test_drain_sends_bye_and_a_close_frame(nursery: trio.Nursery, nextcloud: Any) -> None:
    with trio.fail_after(20):
        srv, hub = await start(nursery, nextcloud)
        c = await srv.client()
        assert (await c.hello("alice"))["type"] == "hello"
        idle = await srv.client()  # connected, no hello yet
        assert say_goodbye(hub) == 2
        for client in (c, idle):
            bye, code = await closed_with(client)
            assert bye["bye"] == {"reason": "shutdown"} and code == 1000
        late = await srv.client()
        bye, code = await closed_with(late)
        assert bye["bye"] == {"reason": "shutdown"} and code == 1000


async def test_a_re_keyed_backend_keeps_its_session_connected(
        nursery: trio.Nursery, nextcloud: Any) -> None:
    with trio.fail_after(20):
        srv, hub = await start(nursery, nextcloud)
        c = await srv.client()
        assert (await c.hello("alice"))["type"] == "hello"
        sig = srv.runtime.config.signaling
        assert sig is not None
        rekeyed = attrs.evolve(sig, backends=tuple(
            attrs.evolve(b, secret=b"rotated-secret") for b in sig.backends))
        assert reconfigure(hub, rekeyed) == ["signaling backend nc1: re-keyed"]
        await c.nothing()  # no bye, no close
        await c.ws.ping()  # the socket is open and answers
        assert not c.ws.closed
        assert len(hub.sessions) == 1
        session = next(iter(hub.sessions.values()))
        assert session.backend.secret == b"rotated-secret"
