"""changed-users end to end: the room requests of a Talk that no longer sends `alluserids` /
`userids` / `users`, next to the full-list shape of older Talk versions (which the room API
tests in test_signaling_backend_room_api.py cover in detail)."""

from __future__ import annotations

from typing import Any

import trio

from tests.signaling.conftest import Client, Server
from tests.signaling.talk_clients import hello, in_room, is_event
from tests.signaling.test_signaling_backend_room_api import post

PROPS = {"name": "Renamed", "type": 3}


def roomlist(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "event": {"target": "roomlist", "type": kind, kind: body}}


UPDATE = roomlist("update", {"roomid": "r1", "properties": PROPS})


async def closed(c: Client) -> bool:
    with trio.move_on_after(5):
        while True:
            try:
                await c.ws.get_message()
            except Exception:
                return True
    return False


async def test_invite_without_alluserids_updates_the_room(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await in_room(server, "r1", "alice", "bob")
        carol = await server.client()
        await hello(carol, "carol")
        (dave,) = await in_room(server, "r2", "dave")  # not in r1, not invited
        alice_elsewhere = await server.client()
        await hello(alice_elsewhere, "alice")  # a member's user, but not in the room
        r = await post(server, "r1", {"type": "invite", "invite": {
            "userids": ["carol"], "properties": PROPS}})
        assert r.status_code == 200
        assert await carol.recv() == roomlist("invite", {"roomid": "r1", "properties": PROPS})
        assert await a.recv() == UPDATE
        assert await b.recv() == UPDATE
        for c in (carol, dave, alice_elsewhere, a, b):
            await c.nothing(0.1)


async def test_disinvite_without_alluserids(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await in_room(server, "r1", "alice", "bob")
        r = await post(server, "r1", {"type": "disinvite", "disinvite": {
            "userids": [], "sessionids": ["talk-bob"], "properties": PROPS}})
        assert r.status_code == 200
        # the room's update first, then bob's disinvite; bob leaves and is disconnected
        assert await b.recv() == UPDATE
        assert await b.recv() == roomlist("disinvite", {"roomid": "r1", "reason": "disinvited"})
        assert await closed(b)
        got = await a.drain(0.2)
        assert got == [UPDATE, {"type": "event", "event": {"target": "room", "type": "leave",
                                                           "leave": [b.session_id]}}]


async def test_update_without_userids(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await in_room(server, "r1", "alice", "bob")
        bob_elsewhere = await server.client()
        await hello(bob_elsewhere, "bob")
        r = await post(server, "r1", {"type": "update", "update": {"properties": PROPS}})
        assert r.status_code == 200
        for c in (a, b):
            got = await c.drain(0.2)
            assert got == [{"type": "room", "room": {"roomid": "r1", "properties": PROPS}},
                           UPDATE]
        await bob_elsewhere.nothing(0.1)


async def test_delete_without_userids_tells_the_sessions_in_the_room(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await in_room(server, "r1", "alice", "bob")
        (c,) = await in_room(server, "r2", "carol")
        alice_elsewhere = await server.client()
        await hello(alice_elsewhere, "alice")
        r = await post(server, "r1", {"type": "delete", "delete": {}})
        assert r.status_code == 200
        for x in (a, b):
            assert await x.drain(0.2) == [
                roomlist("disinvite", {"roomid": "r1", "reason": "deleted"}),
                {"type": "room", "room": {"roomid": ""}}]
        await c.nothing(0.1)
        await alice_elsewhere.nothing(0.1)
        # still connected, out of the room: they can join again
        assert (await a.join("r1", "talk-alice"))["type"] == "room"
        leave = [m["room"]["sessionid"] for m in server.nextcloud.of_type("room")
                 if m["room"].get("action") == "leave"]
        assert sorted(leave) == ["talk-alice", "talk-bob"]


def update_of(m: dict[str, Any]) -> dict[str, Any]:
    return dict(m["event"]["update"])


async def test_participant_users_come_from_the_last_incall_entries(server: Server) -> None:
    with trio.fail_after(20):
        a, b, c = await in_room(server, "r1", "alice", "bob", "carol")
        ea = {"sessionId": "talk-alice", "inCall": 7, "lastPing": 10, "participantType": 1,
              "permissions": ["publish-audio"]}
        await post(server, "r1", {"type": "incall", "incall": {"incall": 7, "changed": [ea]}})
        pa = {"sessionId": a.session_id, "inCall": 7, "lastPing": 10, "participantType": 1}
        for x in (a, b, c):
            m = await x.recv_until(is_event("participants", "update"))
            assert update_of(m) == {"roomid": "r1", "changed": [pa], "users": [pa]}
        # alice is now in the call: call messages reach her
        await b.message({"type": "call"}, {"to-call": 1})
        assert (await a.recv())["message"]["data"] == {"to-call": 1}
        eb = {"sessionId": "talk-bob", "inCall": 3, "lastPing": 11, "participantType": 3}
        await post(server, "r1", {"type": "incall", "incall": {"incall": 3, "changed": [eb]}})
        pb = {**eb, "sessionId": b.session_id}
        for x in (a, b, c):
            m = await x.recv_until(is_event("participants", "update"))
            assert update_of(m) == {"roomid": "r1", "changed": [pb], "users": [pa, pb]}
        # a later entry for alice replaces hers
        ea2 = {**ea, "inCall": 0, "lastPing": 12}
        await post(server, "r1", {"type": "incall", "incall": {"incall": 0, "changed": [ea2]}})
        pa2 = {"sessionId": a.session_id, "inCall": 0, "lastPing": 12, "participantType": 1}
        for x in (a, b, c):
            m = await x.recv_until(is_event("participants", "update"))
            assert update_of(m) == {"roomid": "r1", "changed": [pa2], "users": [pa2, pb]}
        # a `participants` request (only `changed`) shows the same users and does not
        # change them
        ec = {"sessionId": "talk-carol", "participantType": 4, "permissions": []}
        await post(server, "r1", {"type": "participants", "participants": {"changed": [ec]}})
        pc = {"sessionId": c.session_id, "participantType": 4}
        m = await a.recv_until(is_event("participants", "update"))
        assert update_of(m) == {"roomid": "r1", "changed": [pc], "users": [pa2, pb]}
        # bob leaves: his entry goes
        await b.request({"type": "room", "room": {"roomid": "", "sessionid": ""}})
        await post(server, "r1", {"type": "participants", "participants": {"changed": [ec]}})
        m = await a.recv_until(is_event("participants", "update"))
        assert update_of(m)["users"] == [pa2]


async def test_full_lists_of_older_talk_are_still_used(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await in_room(server, "r1", "alice", "bob")
        ea = {"sessionId": "talk-alice", "inCall": 1}
        eb = {"sessionId": "talk-bob", "inCall": 0}
        await post(server, "r1", {"type": "incall", "incall": {
            "incall": 1, "changed": [ea], "users": [ea, eb]}})
        m = await b.recv_until(is_event("participants", "update"))
        assert update_of(m)["users"] == [{"sessionId": a.session_id, "inCall": 1},
                                         {"sessionId": b.session_id, "inCall": 0}]
        # an explicitly empty list is a list too
        await post(server, "r1", {"type": "participants", "participants": {
            "changed": [ea], "users": []}})
        m = await b.recv_until(is_event("participants", "update"))
        assert update_of(m) == {"roomid": "r1",
                                "changed": [{"sessionId": a.session_id, "inCall": 1}]}
        # `update` with `userids`: the users hear it, wherever their sessions are
        bob_elsewhere = await server.client()
        await hello(bob_elsewhere, "bob")
        await post(server, "r1", {"type": "update", "update": {
            "userids": ["bob"], "properties": PROPS}})
        assert await bob_elsewhere.recv() == UPDATE
        got = await a.drain(0.2)
        assert UPDATE not in got  # alice was not listed
