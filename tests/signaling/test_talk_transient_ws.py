"""Transient data (`transient-data`, `transient-sessiondata`) end to end: two or three
clients in a room over the real WebSocket, and the hub's TTL timer on a MockClock."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from relay.signaling import state as st
from relay.signaling.hub import Hub
from relay.signaling.permissions import Permissions
from tests.signaling.conftest import Client, Server
from tests.signaling.talk_clients import hello, in_room, is_event, transient
from tests.signaling.test_signaling_hub_timers import URL, FakeConn, make_hub

MS = 1_000_000  # nanoseconds


def set_msg(key: str, value: Any, ttl: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "set", "key": key, "value": value}
    if ttl is not None:
        body["ttl"] = ttl
    return {"type": "transient", "transient": body}


def remove_msg(key: str) -> dict[str, Any]:
    return {"type": "transient", "transient": {"type": "remove", "key": key}}


def event(kind: str, key: str, **rest: Any) -> dict[str, Any]:
    return {"type": "transient", "transient": {"type": kind, "key": key, **rest}}


async def error_of(c: Client, msg: dict[str, Any]) -> dict[str, Any]:
    reply = await c.request(msg)
    assert reply["type"] == "error", reply
    return dict(reply["error"])


async def test_set_and_remove_reach_everyone_in_the_room(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await in_room(server, "r1", "alice", "bob")
        (outsider,) = await in_room(server, "r2", "carol")
        await a.send(set_msg("k", {"v": 1}))
        for c in (a, b):  # the writer hears its own change too
            assert await c.recv() == event("set", "k", value={"v": 1})
        await a.send(set_msg("k", {"v": 1}))  # same value: no event
        await b.send(set_msg("k", 2))
        for c in (a, b):
            assert await c.recv() == event("set", "k", oldvalue={"v": 1}, value=2)
        # a joiner gets the data as `initial`
        c = await server.client()
        await hello(c, "dave")
        await c.join("r1", "talk-dave")
        got = await c.drain(0.3)
        assert {"type": "transient", "transient": {"type": "initial", "data": {"k": 2}}} in got
        await a.recv_until(is_event("room", "join"))
        await b.recv_until(is_event("room", "join"))
        await c.send(remove_msg("k"))
        for x in (a, b, c):
            assert await x.recv() == event("remove", "k", oldvalue=2)
        await a.send(remove_msg("k"))  # missing key: silent
        await a.send(set_msg("n", None))  # a null value removes (nothing to remove here)
        for x in (a, b, c, outsider):
            await x.nothing(0.15)


async def test_checks_and_their_errors(server: Server) -> None:
    server.nextcloud.room_permissions["talkuser"] = ["publish-audio", "publish-video"]
    with trio.fail_after(20):
        lone = await server.client()
        await hello(lone, "lone")
        err = await error_of(lone, set_msg("k", 1))
        assert err == {"code": "not_in_room", "message": "No room joined yet."}
        a, b, t = await in_room(server, "r1", "alice", "bob", "talkuser")
        bad = [{"type": "transient", "transient": {"type": "set"}},  # no key
               {"type": "transient", "transient": {"key": "k"}},  # no type
               {"type": "transient", "transient": "x"},
               {"type": "transient", "transient": {"type": "set", "key": "k", "value": 1,
                                                   "ttl": "10"}},
               {"type": "transient", "transient": {"type": "set", "key": "k", "value": 1,
                                                   "ttl": 1.5}},
               {"type": "transient"}]
        for msg in bad:
            assert (await error_of(a, msg))["code"] == "invalid_format", msg
        err = await error_of(a, {"type": "transient", "transient": {"type": "clear", "key": "k"}})
        assert err == {"code": "ignored", "message": "Unsupported message type."}
        # Talk's permission lists never contain transient-data
        err = await error_of(t, set_msg("k", 1))
        assert err == {"code": "not_allowed", "message": "Not allowed to update transient data."}
        err = await error_of(t, remove_msg("k"))
        assert err["code"] == "not_allowed"
        # sd:<id> keys only for the session itself
        err = await error_of(a, set_msg("sd:" + b.session_id, {"state": 1}))
        assert err == {"code": "not_allowed",
                       "message": "Not allowed to update this transient data entry."}
        for x in (a, b, t):
            await x.nothing(0.15)  # no change reached anyone
        # the session is still fine after all these errors
        await a.send(set_msg("sd:" + a.session_id, {"state": 1}))
        for x in (a, b, t):
            assert await x.recv() == event("set", "sd:" + a.session_id, value={"state": 1})


async def test_session_data_goes_when_its_session_leaves(server: Server) -> None:
    with trio.fail_after(20):
        a, b, c = await in_room(server, "r1", "alice", "bob", "carol")
        await a.send(set_msg("sd:" + a.session_id, "a"))
        await b.send(set_msg("sd:" + b.session_id, "b"))
        await a.send(set_msg("shared", 1))
        for x in (a, b, c):
            assert len([m for m in await x.drain(0.2) if transient(m)]) == 3
        # leaving the room
        await a.request({"type": "room", "room": {"roomid": "", "sessionid": ""}})
        for x in (b, c):
            got = [m for m in await x.drain(0.2) if transient(m)]
            assert got == [event("remove", "sd:" + a.session_id, oldvalue="a")]
        # saying bye
        await b.request({"type": "bye", "bye": {}})
        got = [m for m in await c.drain(0.2) if transient(m)]
        assert got == [event("remove", "sd:" + b.session_id, oldvalue="b")]
        # a rejoins: the shared key is still there, the session data is gone
        await a.join("r1", "talk-alice")
        got = [m for m in await a.drain(0.2) if transient(m)]
        assert got == [{"type": "transient", "transient": {"type": "initial",
                                                           "data": {"shared": 1}}}]


async def test_data_is_dropped_with_the_room(server: Server) -> None:
    with trio.fail_after(20):
        (a,) = await in_room(server, "r1", "alice")
        await a.send(set_msg("k", 1))
        assert await a.recv() == event("set", "k", value=1)
        await a.request({"type": "room", "room": {"roomid": "", "sessionid": ""}})
        await a.join("r1", "talk-alice")
        assert not [m for m in await a.drain(0.2) if transient(m)]


async def test_ttl_expiry_over_the_socket(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await in_room(server, "r1", "alice", "bob")
        await a.send(set_msg("short", 1, ttl=200 * MS))
        await a.send(set_msg("kept", 2))
        for c in (a, b):
            assert [await c.recv(), await c.recv()] == [
                event("set", "short", value=1), event("set", "kept", value=2)]
        for c in (a, b):
            assert await c.recv_until(transient) == event("remove", "short", oldvalue=1)
        c = await server.client()
        await hello(c, "carol")
        await c.join("r1", "talk-carol")
        initial = await c.recv_until(transient)
        assert initial["transient"]["data"] == {"kept": 2}




async def _joined(hub: Hub, user: str) -> tuple[FakeConn, str]:
    conn = FakeConn()
    hub.connect(conn)
    await hub.receive(conn, json.dumps({"type": "hello", "hello": {
        "version": "1.0", "auth": {"url": URL, "params": {"userid": user}}}}))
    sid = conn.take()[-1]["hello"]["sessionid"]
    await hub.receive(conn, json.dumps({"type": "room", "room": {
        "roomid": "r", "sessionid": "t-" + user}}))
    return conn, sid


def _transients(conn: FakeConn) -> list[dict[str, Any]]:
    return [m["transient"] for m in conn.take() if m["type"] == "transient"]


async def test_one_timer_expires_in_deadline_order(autojump_clock: trio.testing.MockClock) -> None:
    hub, _ = make_hub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        a, _sid = await _joined(hub, "a")
        a.take()
        await hub.receive(a, json.dumps(set_msg("late", 1, ttl=100_000 * MS)))
        await hub.receive(a, json.dumps(set_msg("early", 2, ttl=5_000 * MS)))
        assert [t["key"] for t in _transients(a)] == ["late", "early"]
        await trio.sleep(4)
        assert _transients(a) == []
        await trio.sleep(2)  # the earlier deadline woke the timer that slept for "late"
        assert _transients(a) == [{"type": "remove", "key": "early", "oldvalue": 2}]
        # re-setting the same value restarts its TTL
        await hub.receive(a, json.dumps(set_msg("late", 1, ttl=100_000 * MS)))
        await trio.sleep(95)
        assert _transients(a) == []
        await trio.sleep(10)
        assert _transients(a) == [{"type": "remove", "key": "late", "oldvalue": 1}]
        nursery.cancel_scope.cancel()


async def test_internal_sessions_skip_the_permission_checks() -> None:
    hub, _ = make_hub()
    a, sid = await _joined(hub, "a")
    b, _ = await _joined(hub, "b")
    a.take()
    b.take()
    session = hub.sessions[sid]
    session.permissions = Permissions.of(())
    await hub.receive(a, json.dumps({"id": "1", **set_msg("k", 1)}))
    assert a.take() == [{"id": "1", "type": "error", "error": {
        "code": "not_allowed", "message": "Not allowed to update transient data."}}]
    session.client_type = st.INTERNAL
    await hub.receive(a, json.dumps(set_msg("sd:someone-else", 1)))
    assert _transients(a) == _transients(b) == [{"type": "set", "key": "sd:someone-else",
                                                 "value": 1}]
    # virtual sessions in the room do not hear transient data
    room = session.room
    assert room is not None
    vid = next(s for s in room.sessions if s != sid)
    room.sessions[vid].client_type = st.VIRTUAL
    await hub.receive(a, json.dumps(set_msg("k2", 2)))
    assert _transients(a) == [{"type": "set", "key": "k2", "value": 2}]
    assert _transients(b) == []


async def test_server_side_writes_reach_the_room_and_expire(
        autojump_clock: trio.testing.MockClock) -> None:
    hub, _ = make_hub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        a, sid = await _joined(hub, "a")
        b, _ = await _joined(hub, "b")
        a.take()
        b.take()
        room = hub.sessions[sid].room
        assert room is not None
        status = {"callid": "c1", "status": "ringing"}
        out = room.transient_store().set("callstatus_c1", status, 10_000 * MS,
                                         trio.current_time())
        hub.transient_changed(room, out)
        for conn in (a, b):
            assert _transients(conn) == [{"type": "set", "key": "callstatus_c1", "value": status}]
        await trio.sleep(11)
        for conn in (a, b):
            assert _transients(conn) == [{"type": "remove", "key": "callstatus_c1",
                                          "oldvalue": status}]
        nursery.cancel_scope.cancel()
