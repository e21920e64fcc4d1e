"""Internal clients and their virtual sessions, end to end over WebSocket and the backend API."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from relay.signaling.protocol import FEATURES
from tests.signaling.conftest import Client, Server
from tests.signaling.internal_clients import (
    internal_config,
    internal_hello,
    internal_params,
)
from tests.signaling.talk_clients import in_room
from tests.signaling.test_signaling_backend_room_api import post

INTERNAL_FEATURES = sorted(
    [f for f in FEATURES if f != "audio-video-permissions"] + ["virtual-sessions"])


def _event(target: str, kind: str) -> Any:
    def pred(m: dict[str, Any]) -> bool:
        return m.get("type") == "event" and m["event"]["target"] == target \
            and m["event"]["type"] == kind
    return pred


async def _requested(nextcloud: Any, pred: Any) -> None:
    """Wait (bounded) until Nextcloud got a request matching `pred` (sent in the
    background)."""
    for _ in range(100):
        if any(pred(r) for r in nextcloud.requests):
            return
        await trio.sleep(0.05)
    raise AssertionError("the request never came")


async def _metrics(server: Server) -> str:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"http://127.0.0.1:{server.port}/metrics")).text


async def test_internal_hello_errors(make_server: Any, nextcloud: Any) -> None:
    with trio.fail_after(20):
        plain = await make_server()  # no internalsecret configured
        c = await plain.client()
        r = await internal_hello(c)
        assert r["type"] == "error" and r["error"]["code"] == "invalid_client_type"
        srv = await make_server(internal_config(nextcloud))
        c = await srv.client()
        r = await internal_hello(c, internal_params(nextcloud.url, random="x" * 31))
        assert r["error"]["code"] == "invalid_token"
        r = await internal_hello(c, internal_params(nextcloud.url, secret="wrong"))
        assert r["error"]["code"] == "invalid_token"
        r = await internal_hello(c, internal_params("https://unknown.example/"))
        assert r["error"]["code"] == "invalid_backend"
        r = await internal_hello(c, {"random": "x" * 40, "token": "y"})
        assert r["error"]["code"] == "invalid_format"
        # the same socket can still say a good hello (version 2.0 is fine for internal)
        r = await internal_hello(c, version="2.0")
        assert r["type"] == "hello"


async def test_internal_session_features_limits_and_joins(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(20):
        srv: Server = await make_server(internal_config(nextcloud, backends=[
            {"id": "nc1", "urls": [nextcloud.url], "secret": nextcloud.secret.decode(),
             "sessionlimit": 1}]))
        alice = await srv.client()
        assert (await alice.hello("alice"))["type"] == "hello"
        bridge = await srv.client()
        r = await internal_hello(bridge, features=["internal-incall"])
        # not counted in the session limit; the internal feature list
        assert r["type"] == "hello" and r["hello"]["userid"] == ""
        assert r["hello"]["server"]["features"] == INTERNAL_FEATURES
        assert "virtual-sessions" in INTERNAL_FEATURES
        await alice.join("room1", "talk-a")
        await alice.drain(0.1)
        before = len(nextcloud.of_type("room"))
        r = await bridge.join("room1")
        assert r == {"id": r["id"], "type": "room", "room": {
            "roomid": "room1", "properties": {"name": "Room room1"}}}
        assert len(nextcloud.of_type("room")) == before  # no backend request
        # the room sees the join
        assert await alice.recv() == {"type": "event", "event": {
            "target": "room", "type": "join", "join": [{
                "sessionid": bridge.session_id, "userid": "",
                "features": ["internal-incall"]}]}}
        # it reports its own in-call state: a participants update with its entry
        await bridge.send({"type": "internal", "internal": {
            "type": "incall", "incall": {"incall": 3}}})
        update = await alice.recv_until(_event("participants", "update"))
        [entry] = update["event"]["update"]["users"]
        assert isinstance(entry.pop("lastPing"), int)
        assert entry == {"inCall": 3, "sessionId": bridge.session_id, "internal": True,
                         "features": ["internal-incall"]}
        # Talk's in-call lists get the internal session appended
        r = await post(srv, "room1", {"type": "incall", "incall": {"incall": 1, "changed": [
            {"sessionId": "talk-a", "inCall": 1}], "users": [
            {"sessionId": "talk-a", "inCall": 1}]}})
        assert r.status_code == 200
        update = await alice.recv_until(_event("participants", "update"))
        users = update["event"]["update"]["users"]
        assert [u["sessionId"] for u in users] == [alice.session_id, bridge.session_id]
        assert users[1]["internal"] is True and users[1]["inCall"] == 3
        metrics = await _metrics(srv)
        assert 'signaling_hub_sessions{backend="nc1",clienttype="internal"} 1.0' in metrics
        assert 'signaling_hub_sessions{backend="nc1",clienttype="client"} 1.0' in metrics


async def test_internal_client_controls_and_gets_room_deletion(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(20):
        nextcloud.room_permissions["alice"] = []  # alice may not send control
        srv: Server = await make_server(internal_config(nextcloud))
        alice = await srv.client()
        await alice.hello("alice")
        await alice.join("room1", "talk-a")
        bridge = await srv.client()
        await internal_hello(bridge)
        await bridge.join("room1")
        await alice.drain(0.2)
        await bridge.drain(0.1)
        await alice.message({"type": "session", "sessionid": bridge.session_id},
                            {"type": "mute"}, kind="control")
        await bridge.nothing(0.2)
        await bridge.message({"type": "session", "sessionid": alice.session_id},
                             {"type": "forceMute"}, kind="control")
        m = await alice.recv()
        assert m == {"type": "control", "control": {
            "sender": {"type": "session", "sessionid": bridge.session_id},
            "data": {"type": "forceMute"}}}
        # without internal-incall an internal session counts as in the call with audio
        r = await post(srv, "room1", {"type": "participants", "participants": {
            "changed": [], "users": [{"sessionId": "talk-a", "inCall": 0}]}})
        update = await alice.recv_until(_event("participants", "update"))
        entry = update["event"]["update"]["users"][1]
        assert isinstance(entry.pop("lastPing"), int)
        assert entry == {"inCall": 3, "sessionId": bridge.session_id, "internal": True}
        r = await post(srv, "room1", {"type": "delete", "delete": {"userids": ["alice"]}})
        assert r.status_code == 200
        got = await bridge.drain(0.3)
        assert {"type": "event", "event": {"target": "room", "type": "delete"}} in got
        assert {"type": "room", "room": {"roomid": ""}} in got
        assert {"type": "room", "room": {"roomid": ""}} in await alice.drain(0.2)


async def _bridge_in_room(srv: Server, features: list[str] | None = None
                          ) -> tuple[Client, Client]:
    alice = await srv.client()
    await alice.hello("alice")
    await alice.join("room1", "talk-a")
    bridge = await srv.client()
    await internal_hello(bridge, features=features)
    await alice.drain(0.1)
    return alice, bridge


async def test_virtual_session_joins_gets_messages_flags_and_leaves(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(30):
        srv: Server = await make_server(internal_config(nextcloud))
        alice, bridge = await _bridge_in_room(srv)
        user = {"type": "phone", "callid": "call-1", "number": "+49123"}
        await bridge.send({"type": "internal", "internal": {"type": "addsession",
                           "addsession": {"sessionid": "sip-1", "roomid": "room1",
                                          "userid": "", "user": user, "flags": 2}}})
        msgs = await alice.drain(0.3)
        join = next(m for m in msgs if _event("room", "join")(m))
        [entry] = join["event"]["join"]
        vid = entry["sessionid"]
        assert entry == {"sessionid": vid, "userid": "", "user": user}
        assert vid not in (alice.session_id, bridge.session_id, "sip-1")
        update = next(m for m in msgs if _event("participants", "update")(m))
        [ventry] = update["event"]["update"]["users"]
        assert isinstance(ventry.pop("lastPing"), int)
        assert ventry == {"inCall": 9, "sessionId": vid, "virtual": True}
        flags = next(m for m in msgs if _event("participants", "flags")(m))
        assert flags["event"]["flags"] == {"roomid": "room1", "sessionid": vid, "flags": 2}
        # Nextcloud heard of it (no actor: a `session` add)
        [add] = [r for r in nextcloud.of_type("session") if r["session"]["action"] == "add"]
        assert add["session"] == {"version": "1.0", "roomid": "room1", "action": "add",
                                  "sessionid": vid, "user": user}
        metrics = await _metrics(srv)
        assert 'signaling_hub_sessions{backend="nc1",clienttype="virtual"} 1.0' in metrics
        assert 'signaling_hub_sessions{backend="nc1",clienttype="internal"} 1.0' in metrics
        # a message to the virtual session reaches the bridge, addressed with its own id
        await alice.message({"type": "session", "sessionid": vid}, {"type": "offer"})
        m = await bridge.recv_until(lambda m: m.get("type") == "message")
        assert m["message"] == {
            "sender": {"type": "session", "sessionid": alice.session_id, "userid": "alice"},
            "recipient": {"type": "session", "sessionid": "sip-1"},
            "data": {"type": "offer"}}
        # changed flags are sent, repeats are not
        for f in (6, 6):
            await bridge.send({"type": "internal", "internal": {"type": "updatesession",
                               "updatesession": {"sessionid": "sip-1", "roomid": "room1",
                                                 "flags": f}}})
        got = [m for m in await alice.drain(0.3) if _event("participants", "flags")(m)]
        assert [m["event"]["flags"]["flags"] for m in got] == [6]
        # a newcomer learns the current flags
        bob = await srv.client()
        await bob.hello("bob")
        await bob.join("room1", "talk-b")
        msgs = await bob.drain(0.3)
        assert [m["event"]["flags"] for m in msgs if _event("participants", "flags")(m)] \
            == [{"roomid": "room1", "sessionid": vid, "flags": 6}]
        others = next(m for m in msgs if _event("room", "join")(m)
                      and len(m["event"]["join"]) > 1)
        assert {"sessionid": vid, "userid": "", "user": user} in others["event"]["join"]
        await alice.drain(0.1)
        # in-call change of the virtual session: a full participants update
        await bridge.send({"type": "internal", "internal": {"type": "updatesession",
                           "updatesession": {"sessionid": "sip-1", "roomid": "room1",
                                             "incall": 1}}})
        update = await alice.recv_until(_event("participants", "update"))
        [ventry] = [u for u in update["event"]["update"]["users"] if u["sessionId"] == vid]
        assert ventry["virtual"] is True and ventry["inCall"] == 1
        # removed: the room sees it leave, Nextcloud is told
        await bridge.send({"type": "internal", "internal": {"type": "removesession",
                           "removesession": {"sessionid": "sip-1", "roomid": "room1"}}})
        leave = await alice.recv_until(_event("room", "leave"))
        assert leave["event"]["leave"] == [vid]
        assert (await bob.recv_until(_event("room", "leave")))["event"]["leave"] == [vid]
        await _requested(nextcloud, lambda r: r.get("session", {}).get("action") == "remove")
        [rm] = [r for r in nextcloud.of_type("session") if r["session"]["action"] == "remove"]
        assert rm["session"]["sessionid"] == vid
        # a message to the gone session goes nowhere
        await alice.message({"type": "session", "sessionid": vid}, {"x": 1})
        await bridge.nothing(0.2)
        metrics = await _metrics(srv)
        assert 'signaling_hub_sessions{backend="nc1",clienttype="virtual"}' not in metrics
        assert 'signaling_hub_sessions_total{backend="nc1",clienttype="virtual"} 1.0' \
            in metrics


async def test_virtual_session_with_actor_and_owner_going_away(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(30):
        nextcloud.fail_actors.add("bad-attendee")
        srv: Server = await make_server(internal_config(nextcloud))
        alice, bridge = await _bridge_in_room(srv)
        # the actor path: a `room` join for the phone attendee; its error is add_failed
        r = await bridge.request({"type": "internal", "internal": {"type": "addsession",
                                  "addsession": {"sessionid": "sip-x", "roomid": "room1",
                                                 "options": {"actorId": "bad-attendee",
                                                             "actorType": "phones"}}}})
        assert r["type"] == "error" and r["error"]["code"] == "add_failed"
        assert r["error"]["message"] == "Unknown actor"
        await alice.nothing(0.2)
        # a room that is not on this server: ignored
        await bridge.send({"type": "internal", "internal": {"type": "addsession",
                           "addsession": {"sessionid": "sip-y", "roomid": "elsewhere"}}})
        await bridge.nothing(0.2)
        await bridge.send({"type": "internal", "internal": {"type": "addsession",
                           "addsession": {"sessionid": "sip-2", "roomid": "room1",
                                          "userid": "", "options": {
                                              "actorId": "att-7", "actorType": "phones"}}}})
        join = await alice.recv_until(_event("room", "join"))
        vid = join["event"]["join"][0]["sessionid"]
        await alice.drain(0.2)
        [req] = [r for r in nextcloud.of_type("room") if r["room"].get("actorid") == "att-7"]
        assert req["room"] == {"version": "1.0", "roomid": "room1", "userid": "",
                               "sessionid": vid, "actorid": "att-7", "actortype": "phones",
                               "incall": 9}
        # Talk's in-call notification names the virtual session by its public id
        r = await post(srv, "room1", {"type": "incall", "incall": {"incall": 9, "changed": [
            {"sessionId": vid, "inCall": 9}], "users": [{"sessionId": vid, "inCall": 9}]}})
        update = await alice.recv_until(_event("participants", "update"))
        assert update["event"]["update"]["changed"] == [{"sessionId": vid, "inCall": 9}]
        # Talk removes the phone participant: the bridge is told to hang up
        r = await post(srv, "room1", {"type": "disinvite", "disinvite": {
            "userids": [], "sessionids": [vid], "alluserids": ["alice"]}})
        assert r.status_code == 200
        m = await bridge.recv_until(lambda m: m.get("type") == "control")
        assert m == {"type": "control", "control": {
            "sender": None, "recipient": {"type": "session", "sessionid": "sip-2"},
            "data": {"type": "hangup", "hangup": {"reason": "disinvited"}}}}
        # the bridge's session ends: its virtual session leaves too
        await bridge.request({"type": "bye", "bye": {}})
        leave = await alice.recv_until(_event("room", "leave"))
        assert leave["event"]["leave"] == [vid]
        await _requested(nextcloud, lambda r: r.get("room", {}).get("action") == "leave"
                         and r["room"].get("sessionid") == vid)


async def test_internal_messages_from_normal_clients_are_ignored(server: Server) -> None:
    with trio.fail_after(20):
        alice, bob = await in_room(server, "room1", "alice", "bob",
                                   talk_sessions=["talk-a", "talk-b"])
        await bob.send({"type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": "v", "roomid": "room1"}}})
        await alice.nothing(0.3)
        r = await bob.request({"type": "internal", "internal": {"type": "addsession",
                                                                "addsession": {}}})
        assert r["type"] == "error" and r["error"]["code"] == "invalid_format"


def test_internal_and_virtual_sessions_have_no_join_deadline() -> None:
    from relay.config.signaling import BackendConfig
    from relay.signaling.state import CLIENT, INTERNAL, VIRTUAL, SignalingState

    state = SignalingState(session_expire=30, join_timeout=10)
    backend = BackendConfig("nc1", ("https://nc.example/",), b"s")
    made = {t: state.create(backend=backend, backend_url="", user_id="", user=None,
                            features=(), now=0.0, client_type=t)
            for t in (CLIENT, INTERNAL, VIRTUAL)}
    assert state.due(11.0).join_timed_out == [made[CLIENT]]
    assert state.count("nc1", CLIENT) == 1  # what session limits count


async def test_internal_client_resumes_and_keeps_its_virtual_sessions(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(30):
        srv: Server = await make_server(internal_config(nextcloud))
        alice, bridge = await _bridge_in_room(srv)
        await bridge.send({"type": "internal", "internal": {"type": "addsession",
                           "addsession": {"sessionid": "sip-1", "roomid": "room1"}}})
        join = await alice.recv_until(_event("room", "join"))
        vid = join["event"]["join"][0]["sessionid"]
        await bridge.ws.aclose()
        again = await srv.client()
        r = await again.request({"type": "hello", "hello": {
            "version": "1.0", "resumeid": bridge.resume_id}})
        assert r["type"] == "hello" and r["hello"]["sessionid"] == bridge.session_id
        assert r["hello"]["server"]["features"] == INTERNAL_FEATURES
        await alice.message({"type": "session", "sessionid": vid}, {"type": "candidate"})
        m = await again.recv_until(lambda m: m.get("type") == "message")
        assert m["message"]["recipient"] == {"type": "session", "sessionid": "sip-1"}


async def test_malformed_internal_messages_get_invalid_format(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(30):
        srv: Server = await make_server(internal_config(nextcloud))
        alice, bridge = await _bridge_in_room(srv)
        bad: list[Any] = [
            [1, 2],
            {"type": "addsession", "addsession": {"sessionid": "x"}},
            {"type": "addsession", "addsession": "x"},
            {"type": "updatesession", "updatesession": {"sessionid": "x", "roomid": "room1",
                                                         "flags": -1}},
            {"type": "incall", "incall": {"incall": "yes"}},
            {"type": "dialout", "dialout": {"type": "status", "roomid": "room1"}},
            {"type": 5},
        ]
        for body in bad:
            r = await bridge.request({"type": "internal", "internal": body})
            assert r["type"] == "error" and r["error"]["code"] == "invalid_format", body
        await alice.nothing(0.2)
        # the session is unharmed
        await bridge.send({"type": "internal", "internal": {"type": "addsession",
                           "addsession": {"sessionid": "ok", "roomid": "room1"}}})
        assert (await alice.recv_until(_event("room", "join")))["event"]["join"][0][
            "userid"] == ""
