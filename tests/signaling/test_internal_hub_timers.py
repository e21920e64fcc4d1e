"""Internal clients on a hub without sockets: dial-out waits and call-status TTLs on a
MockClock."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from relay.config.signaling import SignalingConfig
from relay.signaling import dialout
from relay.signaling.hub import Hub
from tests.signaling.internal_clients import INTERNAL_SECRET, internal_params
from tests.signaling.test_signaling_hub_timers import (
    FakeBackend,
    FakeConn,
    NoCapabilities,
    hello,
)

NC = "https://cloud.example.com/"


def make_hub() -> Hub:
    cfg = SignalingConfig(allow_all=True, secret=b"s",
                          internal_secret=INTERNAL_SECRET.encode())
    return Hub(cfg, FakeBackend(), version="test", capabilities=NoCapabilities())


async def bridge(hub: Hub) -> tuple[FakeConn, str]:
    conn = FakeConn()
    hub.connect(conn)
    await hub.receive(conn, json.dumps({"id": "1", "type": "hello", "hello": {
        "version": "1.0", "features": ["start-dialout"],
        "auth": {"type": "internal", "params": internal_params(NC)}}}))
    reply = conn.take()[-1]
    assert reply["type"] == "hello"
    return conn, reply["hello"]["sessionid"]


async def test_a_silent_candidate_times_out_after_45_s_then_the_next_is_asked(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = make_hub()
    await nursery.start(hub.run)
    silent, _ = await bridge(hub)
    good, _ = await bridge(hub)
    backend = hub.backends.compat
    out: list[dialout.DialoutResponse] = []

    async def dial() -> None:
        out.append(await hub.internal.dialout(backend, "42", NC, {"number": "+4912345"}))

    nursery.start_soon(dial)
    await trio.sleep(1)
    [asked] = silent.take()
    assert good.take() == []
    await trio.sleep(dialout.START_TIMEOUT - 2)
    assert good.take() == [] and not out  # still waiting for the first one
    await trio.sleep(2)
    [asked2] = good.take()
    assert asked2["internal"] == asked["internal"]
    await hub.receive(good, json.dumps({"id": asked2["id"], "type": "internal", "internal": {
        "type": "dialout", "dialout": {"type": "error", "error": {
            "code": "busy", "message": "Busy"}}}}))
    await trio.sleep(1)
    # every candidate failed: the first error (the timeout) is the answer
    assert out == [dialout.DialoutResponse(502, {"type": "dialout", "dialout": {"error": {
        "code": "timeout", "message": "Timeout while waiting for dialout to start."}}})]


async def test_finished_call_status_is_removed_after_its_ttl(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = make_hub()
    await nursery.start(hub.run)
    conn, _ = await hello(hub, "alice")
    await hub.receive(conn, json.dumps({"id": "2", "type": "room", "room": {
        "roomid": "42", "sessionid": "talk-a"}}))
    b, _ = await bridge(hub)
    conn.take()

    async def status(value: str) -> None:
        await hub.receive(b, json.dumps({"type": "internal", "internal": {
            "type": "dialout", "dialout": {"type": "status", "roomid": "42", "status": {
                "callid": "c1", "status": value, "cause": "NORMAL_CLEARING"}}}}))

    await status("connected")
    await status("cleared")
    got: list[Any] = conn.take()
    assert [m["transient"]["value"]["status"] for m in got] == ["connected", "cleared"]
    await trio.sleep(3)
    assert conn.take() == []  # 5 s TTL: still there
    await trio.sleep(3)
    assert conn.take() == [{"type": "transient", "transient": {
        "type": "remove", "key": "callstatus_c1",
        "oldvalue": {"callid": "c1", "status": "cleared", "cause": "NORMAL_CLEARING"}}}]
    # other report types go to the room as they are (without roomid)
    await hub.receive(b, json.dumps({"type": "internal", "internal": {
        "type": "dialout", "dialout": {"type": "other", "roomid": "42"}}}))
    assert conn.take() == [{"type": "dialout", "dialout": {"type": "other"}}]
