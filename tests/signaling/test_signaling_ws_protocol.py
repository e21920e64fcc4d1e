"""The `/spreed` WebSocket protocol against a real server and a mock Nextcloud."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import trio
import trio_websocket

from relay import __version__
from tests.signaling.conftest import TALK_PATH

FEATURES = [
    "audio-video-permissions",
    "changed-users",
    "chat-relay",
    "dialout",
    "federation",
    "hello-v2",
    "incall-all",
    "join-features",
    "recipient-call",
    "switchto",
    "transient-data",
    "transient-sessiondata",
    "welcome",
]
WELCOME_FEATURES = sorted([
    *FEATURES,
    "virtual-sessions",
])


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def test_welcome_then_hello_shapes(server: Any) -> None:
    with trio.fail_after(10):
        ws = await trio_websocket.connect_websocket_url(server._nursery, server.ws_url)

        welcome = json.loads(await ws.get_message())
        assert welcome == {"type": "welcome",
                           "welcome": {"version": __version__, "features": WELCOME_FEATURES}}
        await ws.send_message(json.dumps({"id": "1", "type": "hello", "hello": {
            "version": "1.0", "auth": {"url": server.nextcloud.url + TALK_PATH,
                                       "params": {"userid": "alice", "ticket": "t"}}}}))
        reply = json.loads(await ws.get_message())
        assert set(reply) == {"id", "type", "hello"}
        assert reply["id"] == "1" and reply["type"] == "hello"
        h = reply["hello"]
        assert set(h) == {"version", "sessionid", "resumeid", "userid", "server"}
        assert h["version"] == "1.0"
        assert h["userid"] == "alice"
        assert h["server"] == {"version": __version__, "features": FEATURES}
        assert h["sessionid"] != h["resumeid"]
        # The backend got a signed auth request with the client's params, untouched.
        (auth,) = server.nextcloud.of_type("auth")
        assert auth == {"type": "auth", "auth": {"version": "1.0",
                                                 "params": {"userid": "alice", "ticket": "t"}}}
        assert server.nextcloud.paths[-1] == "/" + TALK_PATH
        await ws.aclose()


async def test_base_url_uses_capabilities_for_the_backend_path(server: Any) -> None:
    with trio.fail_after(10):
        c = await server.client()
        reply = await c.hello("bob", url=server.nextcloud.url)
        assert reply["type"] == "hello"
        assert server.nextcloud.paths == [
            "/ocs/v2.php/cloud/capabilities", "/ocs/v2.php/apps/spreed/api/v3/signaling/backend"]


async def test_base_url_without_signaling_v3_uses_v1(server: Any) -> None:
    server.nextcloud.features = []
    with trio.fail_after(10):
        c = await server.client()
        assert (await c.hello("bob", url=server.nextcloud.url.rstrip("/")))["type"] == "hello"
        assert server.nextcloud.paths[-1] == "/ocs/v2.php/apps/spreed/api/v1/signaling/backend"


async def test_session_ids_are_random_urlsafe_without_common_prefix(server: Any) -> None:
    with trio.fail_after(10):
        ids = []
        for i in range(6):
            c = await server.client()
            await c.hello(f"u{i}")
            ids.extend([c.session_id, c.resume_id])
        assert len(set(ids)) == len(ids)
        for sid in ids:
            assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", sid)
        publics = ids[0::2]
        assert len({s[:2] for s in publics}) > 1


async def test_hello_errors_echo_the_id(server: Any) -> None:
    with trio.fail_after(10):
        c = await server.client()
        r = await c.request({"type": "hello", "hello": {"version": "3.0", "auth": {
            "url": server.nextcloud.url, "params": {}}}})
        assert r == {"id": r["id"], "type": "error", "error": {
            "code": "invalid_hello_version", "message": "The hello version is not supported"}}
        r = await c.hello("x", url="https://unknown.example.com/")
        assert r["type"] == "error" and r["error"]["code"] == "invalid_backend"
        r = await c.hello("x", fail=True)
        assert r["error"] == {"code": "invalid_token", "message": "The token is invalid"}
        r = await c.hello("x", garbage=True)
        assert r["error"]["code"] == "auth_failed"
        r = await c.request({"type": "room", "room": {"roomid": "r"}})
        assert r["error"]["code"] == "hello_expected"
        r = await c.request({"type": "hello", "hello": {"version": "1.0", "resumeid": "nope"}})
        assert r["error"]["code"] == "no_such_session"
        # the connection still works after all of that
        assert (await c.hello("x"))["type"] == "hello"


async def test_hello_with_a_wrong_secret_fails(make_server: Any, nextcloud: Any) -> None:
    raw = {"version": "v1", "auth": {"type": "none"}, "signaling": {
        "http": {"listen": "127.0.0.1:0"},
        "backend": {"allowall": True, "secret": "not-the-secret"}}}
    with trio.fail_after(10):
        srv = await make_server(raw)
        c = await srv.client()
        r = await c.hello("alice")
        assert r["type"] == "error"
        assert r["error"]["code"] == "invalid_request"  # what Nextcloud answered
        assert nextcloud.bad_checksums == 1 and nextcloud.requests == []


async def test_malformed_input_gets_errors_not_crashes(server: Any) -> None:
    with trio.fail_after(10):
        c = await server.client()
        await c.ws.send_message("{not json")
        assert (await c.recv())["error"]["code"] == "invalid_format"
        await c.ws.send_message("[1,2]")
        assert (await c.recv())["error"]["code"] == "invalid_format"
        await c.ws.send_message(b"\x00\x01binary")
        assert (await c.recv())["error"]["code"] == "invalid_format"
        await c.send({"id": "m", "type": "message", "message": {"recipient": {"type": "x"}}})
        r = await c.recv()
        assert r["id"] == "m" and r["error"]["code"] == "invalid_format"
        await c.hello("alice")
        await c.send({"id": "z", "type": "no-such-type", "no-such-type": {}})
        await c.send({"id": "m2", "type": "message", "message": {
            "recipient": {"type": "session"}, "data": {}}})
        r = await c.recv()
        assert r["id"] == "m2" and r["error"]["code"] == "invalid_format"
        # another client is unaffected
        d = await server.client()
        assert (await d.hello("dave"))["type"] == "hello"


async def test_oversized_frame_closes_with_1009(server: Any) -> None:
    with trio.fail_after(10):
        c = await server.client()
        await c.hello("alice")
        await c.ws.send_message("x" * (64 * 1024 + 1))
        try:
            while True:
                await c.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason.code == 1009
        d = await server.client()
        assert (await d.hello("dave"))["type"] == "hello"


async def test_bye_replies_and_destroys_the_session(server: Any) -> None:
    with trio.fail_after(10):
        c = await server.client()
        await c.hello("alice")
        r = await c.request({"type": "bye", "bye": {}})
        assert r == {"id": r["id"], "type": "bye"}
        try:
            await c.ws.get_message()
            raise AssertionError("socket should be closed")
        except trio_websocket.ConnectionClosed:
            pass
        d = await server.client()
        r = await d.request({"type": "hello", "hello": {"version": "1.0",
                                                        "resumeid": c.resume_id}})
        assert r["error"]["code"] == "no_such_session"


async def test_two_talk_peers_exchange_offer_answer_candidates(server: Any) -> None:
    with trio.fail_after(10):
        a = await server.client()
        b = await server.client()
        await a.hello("alice")
        await b.hello("bob")
        ra = await a.join("room1", "talk-a")
        assert ra == {"id": ra["id"], "type": "room", "room": {
            "roomid": "room1", "properties": {"name": "Room room1"}}}
        join_a = await a.recv()
        assert join_a == {"type": "event", "event": {"target": "room", "type": "join", "join": [
            {"sessionid": a.session_id, "userid": "alice",
             "user": {"displayname": "Displayname alice"}, "roomsessionid": "talk-a"}]}}
        await b.join("room1", "talk-b")
        # a sees b join; b sees itself join and then gets the member list (a)
        ev = await a.recv()
        assert ev["event"]["type"] == "join"
        assert [e["sessionid"] for e in ev["event"]["join"]] == [b.session_id]
        ev = await b.recv()
        assert [e["sessionid"] for e in ev["event"]["join"]] == [b.session_id]
        ev = await b.recv()
        assert ev["event"]["join"] == [join_a["event"]["join"][0]]
        # Talk's P2P exchange: b (larger id or not) sends an offer, a answers, candidates
        steps = [
            (b, a, {"to": a.session_id, "type": "offer", "roomType": "video", "sid": "1",
                    "payload": {"type": "offer", "sdp": "v=0\r\n..."}}),
            (a, b, {"to": b.session_id, "type": "answer", "roomType": "video", "sid": "1",
                    "payload": {"type": "answer", "sdp": "v=0\r\n..."}}),
            (a, b, {"to": b.session_id, "type": "candidate", "roomType": "video", "sid": "1",
                    "payload": {"candidate": {
                        "candidate": "candidate:1 1 UDP 1 10.0.0.1 5 typ host",
                        "sdpMid": "0", "sdpMLineIndex": 0}}}),
            (b, a, {"to": a.session_id, "type": "endOfCandidates", "roomType": "video"}),
        ]
        users = {a: "alice", b: "bob"}
        for src, dst, data in steps:
            await src.message({"type": "session", "sessionid": dst.session_id}, data)
            got = await dst.recv()
            assert got == {"type": "message", "message": {
                "sender": {"type": "session", "sessionid": src.session_id, "userid": users[src]},
                "data": data}}
        await a.nothing()
        await b.nothing()


async def test_user_room_and_call_recipients(server: Any) -> None:
    with trio.fail_after(10):
        a, b, c = [await server.client() for _ in range(3)]
        await a.hello("alice")
        await b.hello("bob")
        await c.hello("bob")  # a second session of bob
        for i, cl in enumerate((a, b, c)):
            await cl.join("r", f"t{i}")
        for cl in (a, b, c):  # the join events
            assert all(m["type"] == "event" for m in await cl.drain())
        await a.message({"type": "user", "userid": "bob"}, {"hi": 1})
        for cl in (b, c):
            assert await cl.recv() == {"type": "message", "message": {
                "sender": {"type": "user", "sessionid": a.session_id, "userid": "alice"},
                "data": {"hi": 1}}}
        # bob to bob: dropped (own user id); room: everybody but the sender
        await b.message({"type": "user", "userid": "bob"}, {"self": 1})
        await b.message({"type": "room"}, {"all": 1})
        for cl in (a, c):
            assert await cl.recv() == {"type": "message", "message": {
                "sender": {"type": "room", "sessionid": b.session_id, "userid": "bob"},
                "data": {"all": 1}}}
        # call: nobody is in the call (Nextcloud has not said so) -> nobody receives it
        await a.message({"type": "call"}, {"call": 1})
        # unknown session recipient: silently dropped, no error to the sender
        await a.message({"type": "session", "sessionid": "does-not-exist"}, {"x": 1})
        await a.message({"type": "session", "sessionid": a.session_id}, {"echo": 1})
        for cl in (a, b, c):
            await cl.nothing(0.2)


async def test_room_join_errors_and_already_joined(server: Any) -> None:
    with trio.fail_after(10):
        a = await server.client()
        await a.hello("alice")
        r = await a.join("test-invalid-room")
        assert r["error"] == {"code": "no_such_room", "message": "The user is not invited"}
        r = await a.join("test-not-a-room")
        assert r["error"]["code"] == "room_join_failed"
        await a.join("r1", "t1")
        await a.recv()  # own join event
        r = await a.join("r1", "t1")
        assert r == {"id": r["id"], "type": "error", "error": {
            "code": "already_joined", "message": "Already joined this room.",
            "details": {"room": {"roomid": "r1", "properties": {"name": "Room r1"}}}}}
        r = await a.join("")
        assert r == {"id": r["id"], "type": "room", "room": {"roomid": ""}}
        await trio.sleep(0.2)
        leaves = [q for q in server.nextcloud.of_type("room") if q["room"].get("action")]
        assert leaves == [{"type": "room", "room": {"version": "1.0", "roomid": "r1",
                                                    "userid": "alice", "sessionid": "t1",
                                                    "action": "leave"}}]


async def test_leave_event_and_room_switch(server: Any) -> None:
    with trio.fail_after(10):
        a = await server.client()
        b = await server.client()
        await a.hello("alice")
        await b.hello("bob")
        await a.join("r1", "ta")
        await b.join("r1", "tb")
        await a.recv_until(lambda m: m.get("type") == "event" and
                           m["event"]["join"][0]["sessionid"] == b.session_id)
        r = await b.join("r2", "tb2")  # switching rooms leaves r1
        assert r["room"]["roomid"] == "r2"
        ev = await a.recv()
        assert ev == {"type": "event", "event": {"target": "room", "type": "leave",
                                                 "leave": [b.session_id]}}


async def test_room_session_reconnected(server: Any) -> None:
    with trio.fail_after(10):
        a = await server.client()
        await a.hello("alice")
        await a.join("r1", "talk-1")
        a2 = await server.client()
        await a2.hello("alice")
        r = await a2.join("r1", "talk-1")
        assert r["type"] == "room"
        m = await a.recv_until(lambda m: m["type"] == "bye")
        assert m == {"type": "bye", "bye": {"reason": "room_session_reconnected"}}
        d = await server.client()
        r = await d.request({"type": "hello", "hello": {"version": "1.0",
                                                        "resumeid": a.resume_id}})
        assert r["error"]["code"] == "no_such_session"


async def test_resume_replaces_the_old_socket(server: Any) -> None:
    with trio.fail_after(10):
        a = await server.client()
        await a.hello("alice")
        a2 = await server.client()
        r = await a2.request({"type": "hello", "hello": {"version": "1.0",
                                                         "resumeid": a.resume_id}})
        assert r["type"] == "hello"
        assert r["hello"]["sessionid"] == a.session_id
        assert r["hello"]["resumeid"] == a.resume_id
        assert r["hello"]["userid"] == "alice"
        assert await a.recv() == {"type": "bye", "bye": {"reason": "session_resumed"}}


async def test_resume_after_disconnect_flushes_pending(server: Any) -> None:
    with trio.fail_after(10):
        a = await server.client()
        b = await server.client()
        await a.hello("alice")
        await b.hello("bob")
        await a.ws.aclose()
        await trio.sleep(0.1)
        await b.message({"type": "session", "sessionid": a.session_id}, {"while": "away"})
        await b.message({"type": "user", "userid": "alice"}, {"n": 2})
        await trio.sleep(0.1)
        a2 = await server.client()
        r = await a2.request({"type": "hello", "hello": {"version": "1.0",
                                                         "resumeid": a.resume_id}})
        assert r["hello"]["sessionid"] == a.session_id
        assert (await a2.recv())["message"]["data"] == {"while": "away"}
        assert (await a2.recv())["message"]["data"] == {"n": 2}


async def test_control_needs_the_control_permission(server: Any) -> None:
    # as Talk answers a join: moderators get `control`, others only publishing rights
    server.nextcloud.room_permissions["mod"] = ["publish-audio", "publish-video", "control"]
    server.nextcloud.room_permissions["usr"] = ["publish-audio", "publish-video"]
    with trio.fail_after(10):
        mod = await server.client()
        usr = await server.client()
        await mod.hello("mod")
        await usr.hello("usr")
        await mod.join("r", "t-mod")
        await usr.join("r", "t-usr")
        await mod.recv_until(lambda m: m.get("type") == "event" and
                             m["event"]["join"][0]["sessionid"] == usr.session_id)
        await usr.recv_until(lambda m: m.get("type") == "event" and
                             m["event"]["join"][0]["sessionid"] == mod.session_id)
        await usr.message({"type": "session", "sessionid": mod.session_id},
                          {"type": "mute", "audio": 1}, kind="control")
        await mod.nothing(0.2)
        await mod.message({"type": "session", "sessionid": usr.session_id},
                          {"type": "mute", "audio": 1}, kind="control")
        assert await usr.recv() == {"type": "control", "control": {
            "sender": {"type": "session", "sessionid": mod.session_id, "userid": "mod"},
            "data": {"type": "mute", "audio": 1}}}


async def test_session_limit(make_server: Any, nextcloud: Any) -> None:
    raw = {"version": "v1", "auth": {"type": "none"}, "signaling": {
        "http": {"listen": "127.0.0.1:0"},
        "backend": {"backends": [{"id": "nc1", "urls": [nextcloud.url],
                                  "secret": nextcloud.secret.decode(), "sessionlimit": 1}]}}}
    with trio.fail_after(10):
        srv = await make_server(raw)
        a = await srv.client()
        assert (await a.hello("a"))["type"] == "hello"
        b = await srv.client()
        r = await b.hello("b")
        assert r["error"]["code"] == "session_limit_exceeded"


async def test_websocket_outlives_the_http_timeouts(server: Any, monkeypatch: Any) -> None:
    from relay.signaling import server as srvmod

    monkeypatch.setattr(srvmod, "WRITE_TIMEOUT", 0.2)
    monkeypatch.setattr(srvmod, "REQUEST_TIMEOUT", 0.2)
    with trio.fail_after(10):
        a = await server.client()
        b = await server.client()
        await a.hello("alice")
        await b.hello("bob")
        await trio.sleep(0.8)
        await a.message({"type": "session", "sessionid": b.session_id}, {"still": "here"})
        assert (await b.recv())["message"]["data"] == {"still": "here"}


async def test_rejoin_with_a_new_talk_session_sends_change(server: Any) -> None:
    with trio.fail_after(10):
        a = await server.client()
        b = await server.client()
        await a.hello("alice")
        await b.hello("bob")
        await a.join("r", "ta")
        await b.join("r", "tb")
        await a.drain()
        await b.drain()
        r = await b.join("r", "tb-new")
        assert r["error"]["code"] == "already_joined"
        ev = await a.recv()
        assert ev["event"]["type"] == "change"
        assert ev["event"]["change"][0]["sessionid"] == b.session_id
        assert ev["event"]["change"][0]["roomsessionid"] == "tb-new"


async def test_cancellation_closes_the_port_and_the_sockets(
    nursery: Any, sig_config: dict[str, Any]
) -> None:
    from relay.config import Config
    from relay.runtime import Runtime
    from relay.signaling.server import serve_signaling

    with trio.fail_after(10):
        runtime = Runtime(Config.from_mapping(sig_config))
        scope = trio.CancelScope()
        started = trio.Event()
        port = 0

        async def run() -> None:
            nonlocal port
            with scope:
                async with trio.open_nursery() as n:
                    _host, port = await n.start(serve_signaling, runtime)
                    started.set()

        nursery.start_soon(run)
        await started.wait()
        ws = await trio_websocket.connect_websocket_url(nursery, f"ws://127.0.0.1:{port}/spreed")
        await ws.get_message()  # welcome
        scope.cancel()
        with trio.fail_after(3):
            try:
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed:
                pass
        try:
            await trio.open_tcp_stream("127.0.0.1", port)
            raise AssertionError("the port is still open")
        except OSError:
            pass


async def test_backend_failures_are_internal_errors_and_counted(
    make_server: Any, nextcloud: Any
) -> None:
    raw = {"version": "v1", "auth": {"type": "none"}, "signaling": {
        "http": {"listen": "127.0.0.1:0"},
        "backend": {"allowall": True, "secret": nextcloud.secret.decode(), "timeout": 0.3}}}
    with socket_closed_port() as dead_port:
        with trio.fail_after(10):
            srv = await make_server(raw)
            c = await srv.client()
            r = await c.hello("a", url=f"http://127.0.0.1:{dead_port}/{TALK_PATH}")
            assert r["type"] == "error" and r["error"]["code"] == "internal_error"
            nextcloud.delay = 1.0
            r = await c.hello("a")
            assert r["type"] == "error" and r["error"]["code"] == "internal_error"
            nextcloud.delay = 0.0
            assert (await c.hello("a"))["type"] == "hello"
            async with httpx.AsyncClient() as h:
                text = (await h.get(f"http://127.0.0.1:{srv.port}/metrics")).text
            assert ('signaling_backend_client_requests_errors_total'
                    '{backend="compat",error="unknown"} 1.0') in text
            assert ('signaling_backend_client_requests_errors_total'
                    '{backend="compat",error="timeout"} 1.0') in text
            assert 'signaling_backend_client_requests_total{backend="compat"} 3.0' in text
