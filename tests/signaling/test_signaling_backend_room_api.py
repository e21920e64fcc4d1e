"""Nextcloud -> signaling: `POST /api/v1/room/{roomid}` (signed room requests and events)."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from relay.signaling.backend import checksum
from tests.signaling.conftest import (
    OTHER_SECRET,
    SECRET,
    Client,
    Server,
    raw_http,
    signaling_config,
)
from tests.signaling.talk_clients import in_room, room_request


def test_checksum_reference_vector() -> None:
    body = b'{"type":"auth","auth":{"version":"1.0","params":{"hello":"world"}}}'
    rnd = "afb6b872ab03e3376b31bf0af601067222ff7990335ca02d327071b73c0119c6"
    assert checksum(b"MySecretValue", rnd, body) == (
        "3c4a69ff328299803ac2879614b707c807b4758cf19450755c60656cac46e3bc")


async def post(
    server: Server, room: str, payload: Any, *, secret: str = SECRET,
    backend: str | None = "", headers: dict[str, Any] | None = None, raw: bytes | None = None,
) -> httpx.Response:
    return await room_request(
        f"http://127.0.0.1:{server.port}", room, payload, secret=secret,
        backend=server.nextcloud.url if backend == "" else backend, headers=headers, raw=raw)



def _participants(m: dict[str, Any]) -> bool:
    return m.get("type") == "event" and m["event"]["target"] == "participants"


async def two_in_room(server: Server, room: str = "r1") -> tuple[Client, Client]:
    a, b = await in_room(server, room, "alice", "bob", talk_sessions=["talk-a", "talk-b"])
    return a, b


async def test_request_checks(server: Server) -> None:
    with trio.fail_after(20):
        body = {"type": "message", "message": {"data": {"x": 1}}}
        r = await post(server, "r1", body)
        assert r.status_code == 200 and r.json() == {}
        assert r.headers["content-type"].startswith("application/json")
        # bad checksum, unknown backend, missing headers, wrong content type
        r = await post(server, "r1", body, secret=OTHER_SECRET)
        assert r.status_code == 403 and r.text == "Authentication check failed\n"
        r = await post(server, "r1", body, backend="https://other.example.com/")
        assert r.status_code == 403
        r = await post(server, "r1", body, backend="not a url")
        assert r.status_code == 403
        r = await post(server, "r1", body, headers={"Spreed-Signaling-Checksum": ""})
        assert r.status_code == 403
        r = await post(server, "r1", body, headers={"Spreed-Signaling-Checksum": b"\xe9" * 64})
        assert r.status_code == 403
        r = await post(server, "r1", body, headers={"Content-Type": "text/plain"})
        assert r.status_code == 400
        # no Spreed-Signaling-Backend: the backend whose secret signed it
        r = await post(server, "r1", body, backend=None)
        assert r.status_code == 200
        r = await post(server, "r1", body, backend=None, secret=OTHER_SECRET)
        assert r.status_code == 403
        # body problems (signed correctly)
        r = await post(server, "r1", None, raw=b"{not json")
        assert r.status_code == 400
        r = await post(server, "r1", None, raw=b"[1, 2]")
        assert r.status_code == 400
        r = await post(server, "r1", {"type": "incall", "incall": [1]})
        assert r.status_code == 400
        r = await post(server, "r1", {"type": "transient", "transient": {}})
        assert r.status_code == 400 and r.text.startswith("Unsupported request type")
        # method, length, size
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
            r = await c.get("/api/v1/room/r1")
            assert r.status_code == 405 and r.headers["allow"] == "POST"
        out = await raw_http(server.port, b"POST /api/v1/room/r1 HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                             b"\r\n2\r\n{}\r\n0\r\n\r\n", head_only=True)
        assert out.startswith(b"HTTP/1.1 411")
        out = await raw_http(server.port, b"POST /api/v1/room/r1 HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 300000\r\n\r\n",
                             head_only=True)
        assert out.startswith(b"HTTP/1.1 413")
        # the server still works
        r = await post(server, "r1", body)
        assert r.status_code == 200


async def test_allowall_compat_backend(make_server: Any, nextcloud: Any) -> None:
    with trio.fail_after(10):
        srv = await make_server(signaling_config(nextcloud, allowall=True, secret=SECRET))
        body = {"type": "message", "message": {"data": {}}}
        assert (await post(srv, "r", body, backend=None)).status_code == 200
        assert (await post(srv, "r", body, backend="https://any.example/")).status_code == 200
        assert (await post(srv, "r", body, secret=OTHER_SECRET)).status_code == 403


async def test_incall_makes_call_messages_flow(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        await a.message({"type": "call"}, {"before": True})
        await b.nothing(0.2)  # nobody is in the call yet
        users = [
            {"sessionId": "talk-a", "inCall": 7, "lastPing": 1, "participantType": 1,
             "permissions": ["publish-media"]},
            {"sessionId": "talk-b", "inCall": 3, "lastPing": 1, "participantType": 3},
            {"sessionId": "0", "inCall": 0, "lastPing": 1},
            {"sessionId": "talk-unknown", "inCall": 1, "lastPing": 1},
        ]
        r = await post(server, "r1", {"type": "incall", "incall": {
            "incall": 7, "changed": users[:1] + users[2:], "users": users}})
        assert r.status_code == 200
        for c in (a, b):
            m = await c.recv_until(_participants)
            assert m == {"type": "event", "event": {
                "target": "participants", "type": "update", "update": {
                    "roomid": "r1",
                    "changed": [{"sessionId": a.session_id, "inCall": 7, "lastPing": 1,
                                 "participantType": 1}],
                    "users": [
                        {"sessionId": a.session_id, "inCall": 7, "lastPing": 1,
                         "participantType": 1},
                        {"sessionId": b.session_id, "inCall": 3, "lastPing": 1,
                         "participantType": 3},
                    ]}}}
        # only "changed" moves sessions into the call: b is not in it yet
        await b.message({"type": "call"}, {"to-a": 1})
        m = await a.recv()
        assert m["message"]["data"] == {"to-a": 1}
        await a.message({"type": "call"}, {"to-b": 1})
        await b.nothing(0.2)
        r = await post(server, "r1", {"type": "incall", "incall": {
            "incall": 3, "changed": [users[1]], "users": users}})
        await a.recv_until(_participants)
        await b.recv_until(_participants)
        await a.message({"type": "call"}, {"to-b": 2})
        m = await b.recv()
        assert m["message"] == {"sender": {"type": "call", "sessionid": a.session_id,
                                           "userid": "alice"}, "data": {"to-b": 2}}
        metrics = (await httpx.AsyncClient().get(
            f"http://127.0.0.1:{server.port}/metrics")).text
        assert 'signaling_call_sessions{backend="nc1",clienttype="client",room="r1"} 2.0' \
            in metrics
        assert 'signaling_call_rooms_total{backend="nc1"} 1.0' in metrics
        # an in-call update listing nobody known is not sent at all
        r = await post(server, "r1", {"type": "incall", "incall": {
            "incall": 0, "changed": [users[3]], "users": [users[2]]}})
        assert r.status_code == 200
        await a.nothing(0.2)


async def test_incall_all_leaves_the_call(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        r = await post(server, "r1", {"type": "incall", "incall": {"incall": 1, "all": True}})
        assert r.status_code == 200
        want = {"type": "event", "event": {"target": "participants", "type": "update",
                                           "update": {"roomid": "r1", "incall": 1,
                                                      "all": True}}}
        assert await a.recv_until(_participants) == want
        assert await b.recv_until(_participants) == want
        await a.message({"type": "call"}, {"x": 1})
        assert (await b.recv())["message"]["data"] == {"x": 1}
        # all already in: nothing to say
        await post(server, "r1", {"type": "incall", "incall": {"incall": 1, "all": True}})
        await a.nothing(0.2)
        await post(server, "r1", {"type": "incall", "incall": {"incall": 0, "all": True}})
        want["event"]["update"]["incall"] = 0  # type: ignore[index]
        assert await a.recv_until(_participants) == want
        assert await b.recv_until(_participants) == want
        await a.message({"type": "call"}, {"x": 2})
        await b.nothing(0.2)


async def test_participants_permissions(server: Server) -> None:
    server.nextcloud.room_permissions["alice"] = ["publish-audio", "publish-video"]
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        # without `control` permission a's control message is ignored
        await a.message({"type": "session", "sessionid": b.session_id}, {"c": 1}, "control")
        await b.nothing(0.2)
        entry = {"sessionId": "talk-a", "permissions": ["control", "publish-media"],
                 "participantType": 1}
        r = await post(server, "r1", {"type": "participants", "participants": {
            "changed": [entry], "users": [entry]}})
        assert r.status_code == 200
        for c in (a, b):
            m = await c.recv_until(_participants)
            e = {"sessionId": a.session_id, "participantType": 1}
            assert m["event"]["update"] == {"roomid": "r1", "changed": [e], "users": [e]}
        await a.message({"type": "session", "sessionid": b.session_id}, {"c": 2}, "control")
        m = await b.recv()
        assert m["type"] == "control" and m["control"]["data"] == {"c": 2}


async def test_invite_update_message_events(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        c = await server.client()
        await c.hello("carol")
        props = {"name": "New name", "type": 2}
        r = await post(server, "r1", {"type": "invite", "invite": {
            "userids": ["carol"], "alluserids": ["alice", "bob", "carol"],
            "properties": props}})
        assert r.status_code == 200
        assert await c.recv() == {"type": "event", "event": {
            "target": "roomlist", "type": "invite",
            "invite": {"roomid": "r1", "properties": props}}}
        update = {"type": "event", "event": {"target": "roomlist", "type": "update",
                                             "update": {"roomid": "r1", "properties": props}}}
        assert await a.recv() == update
        assert await b.recv() == update
        await c.nothing(0.1)
        # update: the room gets a `room` message, the users a roomlist update
        r = await post(server, "r1", {"type": "update", "update": {
            "userids": ["alice", "bob"], "properties": props}})
        assert r.status_code == 200
        for x in (a, b):
            got = await x.drain(0.2)
            assert {"type": "room", "room": {"roomid": "r1", "properties": props}} in got
            assert update in got
        # same properties again: no room message, the roomlist update still goes out
        await post(server, "r1", {"type": "update", "update": {
            "userids": ["alice"], "properties": props}})
        assert await a.drain(0.2) == [update]
        # message
        data = {"type": "chat", "chat": {"refresh": True}}
        r = await post(server, "r1", {"type": "message", "message": {"data": data}})
        assert r.status_code == 200
        want = {"type": "event", "event": {"target": "room", "type": "message",
                                           "message": {"roomid": "r1", "data": data}}}
        assert await a.recv() == want
        assert await b.recv() == want
        await c.nothing(0.1)


async def test_disinvite_kicks_session_out(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        other = await server.client()
        await other.hello("alice")  # alice in no room: gets the event, stays connected
        r = await post(server, "r1", {"type": "disinvite", "disinvite": {
            "userids": [], "sessionids": ["talk-b", "0"], "alluserids": ["alice"],
            "properties": {"name": "x"}}})
        assert r.status_code == 200
        m = await b.recv()
        assert m == {"type": "event", "event": {"target": "roomlist", "type": "disinvite",
                                                "disinvite": {"roomid": "r1",
                                                              "reason": "disinvited"}}}
        with trio.fail_after(5):
            while True:  # the socket closes after the disinvite
                try:
                    await b.ws.get_message()
                except Exception:
                    break
        got = await a.drain(0.3)
        assert {"type": "event", "event": {"target": "room", "type": "leave",
                                           "leave": [b.session_id]}} in got
        update = {"type": "event", "event": {"target": "roomlist", "type": "update",
                                             "update": {"roomid": "r1",
                                                        "properties": {"name": "x"}}}}
        assert update in got  # alice's sessions: in `alluserids`, not disinvited
        assert await other.recv() == update
        # disinviting the user: a (in r1) is kicked, alice's other session (no room) is not
        r = await post(server, "r1", {"type": "disinvite", "disinvite": {
            "userids": ["alice"], "alluserids": []}})
        disinvite = await other.recv()
        assert disinvite["event"]["disinvite"] == {"roomid": "r1", "reason": "disinvited"}
        assert (await a.recv())["event"]["type"] == "disinvite"
        await other.send({"type": "message", "message": {
            "recipient": {"type": "session", "sessionid": other.session_id}, "data": 1}})
        await other.nothing(0.2)  # still connected (no close), never echoed
        leave = [m for m in server.nextcloud.of_type("room")
                 if m["room"].get("action") == "leave"]
        assert {m["room"]["sessionid"] for m in leave} >= {"talk-b", "talk-a"}


async def test_delete_makes_everyone_leave(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        r = await post(server, "r1", {"type": "delete", "delete": {"userids": ["alice", "bob"]}})
        assert r.status_code == 200
        for c in (a, b):
            got = await c.drain(0.3)
            assert got[0] == {"type": "room", "room": {"roomid": ""}}
            assert {"type": "event", "event": {"target": "roomlist", "type": "disinvite",
                                               "disinvite": {"roomid": "r1",
                                                             "reason": "deleted"}}} in got
            assert not any(m.get("event", {}).get("type") == "leave" for m in got)
        stats = (await httpx.AsyncClient().get(
            f"http://127.0.0.1:{server.port}/api/v1/stats")).json()
        assert stats == {"rooms": 0, "sessions": 2}
        # they can join again
        assert (await a.join("r1", "talk-a"))["type"] == "room"


async def test_unknown_room_is_harmless(server: Server) -> None:
    server.nextcloud.room_permissions["alice"] = ["publish-audio"]
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        for payload in (
            {"type": "incall", "incall": {"incall": 1, "all": True}},
            {"type": "incall", "incall": {"incall": 1, "changed": [
                {"sessionId": "talk-a", "inCall": 1}], "users": []}},
            {"type": "participants", "participants": {"changed": [
                {"sessionId": "talk-a", "permissions": ["control"]}]}},
            {"type": "update", "update": {"userids": [], "properties": {"n": 1}}},
            {"type": "delete", "delete": {"userids": []}},
            {"type": "message", "message": {"data": {"x": 1}}},
        ):
            r = await post(server, "no-such-room", payload)
            assert r.status_code == 200, payload
        await a.nothing(0.2)
        await b.nothing(0.1)
        # a is still in r1, not in the call, without control permission
        await a.message({"type": "call"}, {"x": 1})
        await a.message({"type": "session", "sessionid": b.session_id}, {"c": 1}, "control")
        await b.nothing(0.2)
        await a.message({"type": "room"}, {"x": 2})
        assert (await b.recv())["message"]["data"] == {"x": 2}
