"""audio-video-permissions and join-features over the real WebSocket with the mock Nextcloud:
permissions from the join answer and from backend `participants` requests, `control`
enforcement, `hide-displaynames` filtering, and the join-event entries Talk reads."""

from __future__ import annotations

from typing import Any

import trio

from tests.signaling.conftest import Client, Server
from tests.signaling.talk_clients import hello, in_room, is_event
from tests.signaling.test_signaling_backend_room_api import post

MUTE = {"type": "mute", "audio": 1}


async def control(src: Client, dst: Client, data: Any = MUTE) -> None:
    await src.message({"type": "session", "sessionid": dst.session_id}, data, kind="control")


async def control_arrives(src: Client, dst: Client, data: Any = MUTE) -> None:
    await control(src, dst, data)
    got = await dst.recv()
    assert got["type"] == "control" and got["control"]["data"] == data
    assert got["control"]["sender"]["sessionid"] == src.session_id


async def users(server: Server, *names: str, room: str = "r1") -> list[Client]:
    return await in_room(server, room, *names)


async def test_join_answer_permissions_decide_control(server: Server) -> None:
    nc = server.nextcloud
    nc.room_permissions["mod"] = ["publish-audio", "publish-video", "publish-screen", "control"]
    nc.room_permissions["usr"] = ["publish-audio", "publish-video"]
    nc.room_permissions["none"] = []
    with trio.fail_after(20):
        mod, usr, none, guest = await users(server, "mod", "usr", "none", "guest")
        await control_arrives(mod, usr)
        # without `control` in the list: dropped silently (no error to the sender)
        await control(usr, mod)
        await control(none, mod, {"type": "mute", "video": 1})
        await mod.nothing(0.2)
        await usr.nothing(0.05)
        await none.nothing(0.05)
        # Nextcloud set no list for `guest`: everything is granted until it does
        await control_arrives(guest, usr)
        # plain messages need no permission
        await usr.message({"type": "session", "sessionid": mod.session_id}, {"x": 1})
        assert (await mod.recv())["message"]["data"] == {"x": 1}


async def test_participants_update_changes_permissions(server: Server) -> None:
    server.nextcloud.room_permissions["alice"] = ["publish-audio"]
    with trio.fail_after(20):
        a, b = await users(server, "alice", "bob")
        await control(a, b)
        await b.nothing(0.2)
        # Talk's `participants` request: `changed` carries the new list for talk-alice
        entry = {"sessionId": "talk-alice", "participantType": 2, "participantPermissions": 254,
                 "permissions": ["publish-audio", "publish-video", "control"]}
        r = await post(server, "r1", {"type": "participants", "participants": {
            "changed": [entry], "users": [entry, {"sessionId": "talk-bob", "permissions": []}]}})
        assert r.status_code == 200
        want_entry = {"sessionId": a.session_id, "participantType": 2,
                      "participantPermissions": 254}
        for c in (a, b):
            m = await c.recv_until(is_event("participants", "update"))
            # `permissions` never reaches clients; they read participantPermissions
            assert m["event"]["update"] == {
                "roomid": "r1", "changed": [want_entry],
                "users": [want_entry, {"sessionId": b.session_id}]}
        await control_arrives(a, b)
        # bob's empty list (in `users` only) changed nothing: only `changed` counts
        await control_arrives(b, a)
        # an entry with a non-string permission is skipped as a whole
        bad = {"sessionId": "talk-alice", "permissions": ["publish-audio", 7]}
        await post(server, "r1", {"type": "participants", "participants": {
            "changed": [bad], "users": [bad]}})
        await a.recv_until(is_event("participants", "update"))
        await b.recv_until(is_event("participants", "update"))
        await control_arrives(a, b)
        # revoking: an empty list grants nothing
        revoke = {"sessionId": "talk-alice", "permissions": []}
        await post(server, "r1", {"type": "participants", "participants": {
            "changed": [revoke], "users": [revoke]}})
        await b.recv_until(is_event("participants", "update"))
        await a.recv_until(is_event("participants", "update"))
        await control(a, b)
        await b.nothing(0.2)


async def test_incall_requests_do_not_change_permissions(server: Server) -> None:
    server.nextcloud.room_permissions["alice"] = ["publish-audio"]
    with trio.fail_after(20):
        a, b = await users(server, "alice", "bob")
        entry = {"sessionId": "talk-alice", "inCall": 1, "permissions": ["control"]}
        await post(server, "r1", {"type": "incall", "incall": {
            "incall": 1, "changed": [entry], "users": [entry]}})
        m = await b.recv_until(is_event("participants", "update"))
        assert "permissions" not in m["event"]["update"]["changed"][0]
        await control(a, b)
        await b.nothing(0.2)


async def test_hide_displaynames_filters_what_the_session_sees(server: Server) -> None:
    server.nextcloud.room_permissions["viewer"] = ["publish-audio", "hide-displaynames"]
    with trio.fail_after(20):
        viewer = await server.client()
        peer = await server.client()
        await hello(viewer, "viewer", ["chat-relay"])
        await hello(peer, "peer", ["chat-relay"])
        await viewer.join("r1", "talk-viewer")
        await viewer.drain(0.1)
        await peer.join("r1", "talk-peer")
        # the viewer sees the joiner without its display name ...
        join = await viewer.recv_until(is_event("room", "join"))
        assert join["event"]["join"] == [{"sessionid": peer.session_id, "userid": "peer",
                                          "roomsessionid": "talk-peer",
                                          "features": ["chat-relay"]}]
        # ... the peer sees everyone's (its own join, then the member list)
        got = await peer.drain(0.2)
        lists = [m["event"]["join"] for m in got if is_event("room", "join")(m)]
        assert lists[1] == [{"sessionid": viewer.session_id, "userid": "viewer",
                             "user": {"displayname": "Displayname viewer"},
                             "roomsessionid": "talk-viewer", "features": ["chat-relay"]}]
        # nickChanged messages are dropped for the viewer, other messages are not
        nick = {"type": "nickChanged", "payload": {"name": "New name"}}
        await peer.message({"type": "room"}, nick)
        await peer.message({"type": "room"}, {"type": "other"})
        assert (await viewer.recv())["message"]["data"] == {"type": "other"}
        await peer.message({"type": "session", "sessionid": viewer.session_id}, nick)
        await viewer.nothing(0.2)
        await viewer.message({"type": "session", "sessionid": peer.session_id}, nick)
        assert (await peer.recv())["message"]["data"] == nick
        # chat comments relayed by the server carry no actorDisplayName for the viewer
        comment = {"id": 5, "actorType": "users", "actorId": "peer",
                   "actorDisplayName": "Peer P.", "message": "hi"}
        r = await post(server, "r1", {"type": "message", "message": {"data": {
            "type": "chat", "chat": {"refresh": True, "comment": comment}}}})
        assert r.status_code == 200
        seen = await viewer.recv_until(is_event("room", "message"))
        assert seen["event"]["message"]["data"] == {
            "type": "chat", "chat": {"comment": {**comment, "actorDisplayName": ""}}}
        seen = await peer.recv_until(is_event("room", "message"))
        assert seen["event"]["message"]["data"] == {"type": "chat", "chat": {"comment": comment}}


async def test_hide_displaynames_granted_later_by_a_participants_request(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await users(server, "alice", "bob")
        entry = {"sessionId": "talk-alice", "permissions": ["hide-displaynames"]}
        await post(server, "r1", {"type": "participants", "participants": {
            "changed": [entry], "users": [entry]}})
        await a.recv_until(is_event("participants", "update"))
        await b.recv_until(is_event("participants", "update"))
        c = await server.client()
        await hello(c, "carol")
        await c.join("r1", "talk-carol")
        seen_by_a = await a.recv_until(is_event("room", "join"))
        seen_by_b = await b.recv_until(is_event("room", "join"))
        assert "user" not in seen_by_a["event"]["join"][0]
        assert seen_by_b["event"]["join"][0]["user"] == {"displayname": "Displayname carol"}


async def test_join_events_carry_the_hello_features(server: Server) -> None:
    with trio.fail_after(20):
        a = await server.client()
        b = await server.client()
        await hello(a, "alice", ["chat-relay", "encryption"])
        await hello(b, "bob")
        await a.join("r1", "talk-a")
        own = await a.recv_until(is_event("room", "join"))
        assert own["event"]["join"][0]["features"] == ["chat-relay", "encryption"]
        await b.join("r1", "talk-b")
        seen = await a.recv_until(is_event("room", "join"))
        assert seen["event"]["join"] == [{"sessionid": b.session_id, "userid": "bob",
                                          "user": {"displayname": "Displayname bob"},
                                          "roomsessionid": "talk-b"}]  # no features: no key
        await b.recv_until(is_event("room", "join"))  # its own
        members = await b.recv_until(is_event("room", "join"))
        assert members["event"]["join"][0]["sessionid"] == a.session_id
        assert members["event"]["join"][0]["features"] == ["chat-relay", "encryption"]


async def test_unreadable_join_permissions_fail_the_join_cleanly(server: Server) -> None:
    server.nextcloud.room_permissions["alice"] = "control"  # not a list
    with trio.fail_after(20):
        a = await server.client()
        b = await server.client()
        await hello(a, "alice")
        await hello(b, "bob")
        await b.join("r1", "talk-b")
        await b.drain(0.1)
        r = await a.join("r1", "talk-a")
        assert r["type"] == "error" and r["error"]["code"] == "internal_error"
        await b.nothing(0.2)  # a never joined
        server.nextcloud.room_permissions["alice"] = ["control"]
        assert (await a.join("r1", "talk-a"))["type"] == "room"
        await b.recv_until(is_event("room", "join"))
