"""A client of our server joins a federated room: the hub runs its link to a (fake) remote
signaling server on 127.0.0.1 and relays both ways (talk-features.md §4.1-4.7)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio

from relay.config import Config
from relay.config.signaling import SignalingConfig
from relay.errors import ConfigError
from relay.signaling.hub import Hub
from tests.signaling.conftest import Client, Server
from tests.signaling.fake_remote import OTHER_SESSION, ROOM_PROPERTIES, FakeRemote
from tests.signaling.talk_clients import in_room
from tests.signaling.test_signaling_hub_timers import FakeBackend, hello

REMOTE_NC = "https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend"


@pytest.fixture
async def remote(nursery: trio.Nursery) -> FakeRemote:
    r = FakeRemote()
    await r.start(nursery)
    return r


def federation(signaling: str, token: str = "good-token", **extra: Any) -> dict[str, Any]:
    return {"signaling": signaling, "url": REMOTE_NC, "roomid": "remote-room",
            "token": token, **extra}


async def fed_join(c: Client, fed: dict[str, Any], mid: str = "j1",
                   roomid: str = "local-room", sessionid: str = "talk-c") -> None:
    await c.send({"id": mid, "type": "room", "room": {
        "roomid": roomid, "sessionid": sessionid, "federation": fed}})


def event(m: dict[str, Any], kind: str) -> bool:
    return m.get("type") == "event" and m["event"].get("type") == kind


async def test_federated_join_relays_both_ways_and_survives_a_drop(
    server: Server, remote: FakeRemote
) -> None:
    with trio.fail_after(15):
        c = await server.client()
        assert (await c.hello("alice"))["type"] == "hello"
        await fed_join(c, federation(remote.signaling_url))
        # The remote's answer, with the client's id and the local room id.
        reply = await c.recv_until(lambda m: m.get("type") == "room")
        assert reply == {"id": "j1", "type": "room",
                         "room": {"roomid": "local-room", "properties": ROOM_PROPERTIES}}
        joined = await c.recv_until(lambda m: event(m, "join"))
        ids = [e["sessionid"] for e in joined["event"]["join"]]
        assert ids == [OTHER_SESSION, c.session_id]  # own remote id mapped back
        # What the remote got: a federation hello v2 with the token, then the join.
        (h,) = remote.hellos
        assert h["hello"]["version"] == "2.0"
        assert h["hello"]["auth"] == {"type": "federation", "url": REMOTE_NC,
                                      "params": {"token": "good-token"}}
        join = await remote.wait_for(lambda m: m.get("type") == "room")
        assert join["room"] == {"roomid": "remote-room", "sessionid": "talk-c"}
        # Our Nextcloud hears nothing about the remote room.
        assert server.nextcloud.of_type("room") == []

        # Local -> remote: a message to another participant goes over the link.
        await c.message({"type": "session", "sessionid": OTHER_SESSION}, {"hi": 1})
        got = await remote.wait_for(lambda m: m.get("type") == "message")
        assert got["message"] == {"recipient": {"type": "session", "sessionid": OTHER_SESSION},
                                  "data": {"hi": 1}}
        # Remote -> local: addressed to our remote id, delivered with our local id.
        own_remote = "remote-own-1"
        await remote.push({"type": "message", "message": {
            "sender": {"type": "session", "sessionid": OTHER_SESSION},
            "recipient": {"type": "session", "sessionid": own_remote},
            "data": {"type": "offer", "to": own_remote, "from": OTHER_SESSION}}})
        msg = await c.recv_until(lambda m: m.get("type") == "message")
        assert msg["message"]["recipient"]["sessionid"] == c.session_id
        assert msg["message"]["data"]["to"] == c.session_id

        # The remote drops the connection: interrupted, then resumed on the same session.
        await remote.drop()
        assert event(await c.recv_until(lambda m: m.get("type") == "event"),
                     "federation_interrupted")
        resumed = await c.recv_until(lambda m: event(m, "federation_resumed"))
        assert resumed["event"] == {"target": "room", "type": "federation_resumed",
                                    "resumed": True}
        assert remote.hellos[-1]["hello"]["resumeid"] == "resume-1"

        # Leaving: the remote's answer reaches the client, then the link says bye.
        await c.send({"id": "l1", "type": "room", "room": {"roomid": ""}})
        left = await c.recv_until(lambda m: m.get("type") == "room")
        assert left == {"id": "l1", "type": "room", "room": {"roomid": ""}}
        await remote.wait_for(lambda m: m.get("type") == "bye")
        # Not federated any more: a local join goes to our Nextcloud.
        assert (await c.join("room-2", "talk-c2"))["room"]["roomid"] == "room-2"
        assert server.nextcloud.of_type("room")[-1]["room"]["roomid"] == "room-2"


async def test_local_join_leaves_the_federated_room(server: Server, remote: FakeRemote) -> None:
    with trio.fail_after(10):
        c = await server.client()
        await c.hello("alice")
        await fed_join(c, federation(remote.signaling_url))
        await c.recv_until(lambda m: event(m, "join"))
        reply = await c.join("room-3", "talk-3")
        assert reply["type"] == "room" and reply["room"]["roomid"] == "room-3"
        leave = await remote.wait_for(lambda m: m.get("type") == "room" and
                                      m["room"]["roomid"] == "")
        assert "id" not in leave
        await remote.wait_for(lambda m: m.get("type") == "bye")


async def test_a_bad_federated_join_keeps_the_local_room(server: Server) -> None:
    with trio.fail_after(10):
        a, b = await in_room(server, "room-1", "alice", "bob",
                             talk_sessions=["talk-a", "talk-b"])
        await fed_join(b, {"signaling": "http://127.0.0.1:1/", "url": REMOTE_NC}, mid="x")
        err = await b.recv_until(lambda m: m.get("id") == "x")
        assert err["error"]["code"] == "invalid_format"
        await a.nothing(0.2)  # no `leave` of b
        await a.message({"type": "session", "sessionid": b.session_id}, {"still": "here"})
        got = await b.recv_until(lambda m: m.get("type") == "message")
        assert got["message"]["data"] == {"still": "here"}
        assert [r["room"].get("action") for r in server.nextcloud.of_type("room")] == [
            None, None]


async def test_federated_client_resumes_and_gets_what_came_meanwhile(
    server: Server, remote: FakeRemote
) -> None:
    with trio.fail_after(10):
        c = await server.client()
        await c.hello("alice")
        await fed_join(c, federation(remote.signaling_url))
        await c.recv_until(lambda m: event(m, "join"))
        await c.ws.aclose()  # the client's socket goes away; the link stays
        await trio.sleep(0.1)
        await remote.push({"type": "message", "message": {
            "sender": {"type": "session", "sessionid": OTHER_SESSION},
            "data": {"while": "away"}}})
        again = await server.client()
        reply = await again.request({"type": "hello", "hello": {
            "version": "1.0", "resumeid": c.resume_id}})
        assert reply["type"] == "hello" and reply["hello"]["sessionid"] == c.session_id
        got = await again.recv_until(lambda m: m.get("type") == "message")
        assert got["message"]["data"] == {"while": "away"}
        # ... and is still federated: its messages go to the remote.
        await again.message({"type": "session", "sessionid": OTHER_SESSION}, {"back": 1})
        sent = await remote.wait_for(lambda m: m.get("type") == "message")
        assert sent["message"]["data"] == {"back": 1}


async def test_bye_closes_the_link(server: Server, remote: FakeRemote) -> None:
    with trio.fail_after(10):
        c = await server.client()
        await c.hello("alice")
        await fed_join(c, federation(remote.signaling_url))
        await c.recv_until(lambda m: event(m, "join"))
        await c.send({"id": "b", "type": "bye", "bye": {}})
        await remote.wait_for(lambda m: m.get("type") == "bye")


async def test_federation_errors(server: Server, nursery: trio.Nursery) -> None:
    old = FakeRemote(header_features=["hello-v2"])
    await old.start(nursery)
    ok = FakeRemote()
    await ok.start(nursery)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: refused
        with trio.fail_after(15):
            c = await server.client()
            await c.hello("alice")
            # The remote does not support federation.
            await fed_join(c, federation(old.signaling_url), mid="e1")
            err = await c.recv_until(lambda m: m.get("id") == "e1")
            assert err["error"]["code"] == "federation_unsupported"
            # Nobody listens there.
            await fed_join(c, federation(f"http://127.0.0.1:{closed}/"), mid="e2")
            err = await c.recv_until(lambda m: m.get("id") == "e2")
            assert err["error"]["code"] == "federation_error"
            assert err["error"]["details"]["code"] == "network_error"
            # The remote refuses the token: its error, with the client's join id.
            await fed_join(c, federation(ok.signaling_url, token="bad-token"), mid="e3")
            err = await c.recv_until(lambda m: m.get("id") == "e3")
            assert err["error"]["code"] == "invalid_token"
            # A federation object without its token.
            fed = federation(ok.signaling_url)
            del fed["token"]
            await fed_join(c, fed, mid="e4")
            err = await c.recv_until(lambda m: m.get("id") == "e4")
            assert err["error"]["code"] == "invalid_format"
            # The session is still fine: a good federated join works.
            await fed_join(c, federation(ok.signaling_url), mid="e5")
            reply = await c.recv_until(lambda m: m.get("id") == "e5")
            assert reply["type"] == "room" and reply["room"]["roomid"] == "local-room"


async def test_federated_sessions_are_pinged_to_our_nextcloud(remote: FakeRemote) -> None:
    backend = FakeBackend()
    hub = Hub(SignalingConfig(allow_all=True, secret=b"s"), backend, version="test")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            conn, h = await hello(hub, "alice")
            await hub.receive(conn, json.dumps({"id": "j", "type": "room", "room": {
                "roomid": "local-room", "sessionid": "talk-a",
                "federation": federation(remote.signaling_url)}}))
            await remote.wait_for(lambda m: m.get("type") == "room")
            session = hub.sessions[h["sessionid"]]
            assert session.room_session_id == "federated|talk-a"
            assert session.join_deadline is None
            hub.ping_rooms()
            for _ in range(50):
                if any(p["type"] == "ping" for _, p in backend.requests):
                    break
                await trio.sleep(0.01)
            pings = [p for _, p in backend.requests if p["type"] == "ping"]
            assert pings == [{"type": "ping", "ping": {
                "version": "1.0", "roomid": "local-room",
                "entries": [{"sessionid": "talk-a", "userid": "alice"}]}}]
            assert [p for _, p in backend.requests if p["type"] == "room"] == []
            nursery.cancel_scope.cancel()


def test_federation_config() -> None:
    raw = {"version": "v1", "auth": {"type": "none"}, "signaling": {
        "backend": {"allowall": True, "secret": "x"},
        "federation": {"timeout": 3, "skipverify": True}}}
    sig = Config.from_mapping(raw).signaling
    assert sig is not None
    assert (sig.federation_timeout, sig.federation_skip_verify) == (3.0, True)
    raw["signaling"]["federation"] = {}  # type: ignore[index]
    sig = Config.from_mapping(raw).signaling
    assert sig is not None
    assert (sig.federation_timeout, sig.federation_skip_verify) == (10.0, False)
    raw["signaling"]["federation"] = {"timeout": 0}  # type: ignore[index]
    with pytest.raises(ConfigError) as err:
        Config.from_mapping(raw)
    assert "signaling.federation.timeout" in str(err.value)
