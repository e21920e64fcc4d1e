"""chat-relay end to end: Nextcloud's room `message` with chat comments reaches a client that
announced `chat-relay` one event per comment and a plain client as one refresh."""

from __future__ import annotations

from typing import Any

import trio

from tests.signaling.conftest import Client, Server
from tests.signaling.talk_clients import in_room, is_event
from tests.signaling.test_signaling_backend_room_api import post


def comment(n: int) -> dict[str, Any]:
    return {"id": n, "token": "r1", "actorType": "users", "actorId": "alice",
            "actorDisplayName": "Alice A.", "message": f"message {n}", "messageType": "comment",
            "timestamp": 1700000000 + n}


def chat_event(chat: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "event": {"target": "room", "type": "message", "message": {
        "roomid": "r1", "data": {"type": "chat", "chat": chat}}}}


async def messages(c: Client) -> list[dict[str, Any]]:
    return [m for m in await c.drain(0.2) if is_event("room", "message")(m)]


async def test_comments_per_client_feature(server: Server) -> None:
    with trio.fail_after(20):
        relay, plain = await in_room(server, "r1", "relay", "plain",
                                     features={"relay": ["chat-relay"]})
        (elsewhere,) = await in_room(server, "r2", "other", features={"other": ["chat-relay"]})
        # several comments in one request (`comment` first, then `comments`)
        data = {"type": "chat", "chat": {"refresh": True, "comment": comment(1),
                                         "comments": [comment(2), comment(3)]}}
        r = await post(server, "r1", {"type": "message", "message": {"data": data}})
        assert r.status_code == 200
        assert await messages(relay) == [chat_event({"comment": comment(n)}) for n in (1, 2, 3)]
        assert await messages(plain) == [chat_event({"refresh": True})]
        await elsewhere.nothing(0.1)
        # a single comment
        data = {"type": "chat", "chat": {"refresh": True, "comment": comment(4)}}
        await post(server, "r1", {"type": "message", "message": {"data": data}})
        assert await messages(relay) == [chat_event({"comment": comment(4)})]
        assert await messages(plain) == [chat_event({"refresh": True})]


async def test_old_style_refresh_and_other_data_pass_unchanged(server: Server) -> None:
    with trio.fail_after(20):
        relay, plain = await in_room(server, "r1", "relay", "plain",
                                     features={"relay": ["chat-relay"]})
        for data in ({"type": "chat", "chat": {"refresh": True}},
                     {"type": "recording", "recording": {"status": 1}}):
            await post(server, "r1", {"type": "message", "message": {"data": data}})
            want = {"type": "event", "event": {"target": "room", "type": "message",
                                               "message": {"roomid": "r1", "data": data}}}
            assert await messages(relay) == [want]
            assert await messages(plain) == [want]


async def test_a_detached_session_gets_one_refresh_on_resume(server: Server) -> None:
    with trio.fail_after(20):
        relay, plain = await in_room(server, "r1", "relay", "plain",
                                     features={"relay": ["chat-relay"]})
        await plain.ws.aclose()
        await trio.sleep(0.2)  # the server notices the socket is gone
        for n in (1, 2, 3):
            data = {"type": "chat", "chat": {"refresh": True, "comment": comment(n)}}
            await post(server, "r1", {"type": "message", "message": {"data": data}})
        assert await messages(relay) == [chat_event({"comment": comment(n)}) for n in (1, 2, 3)]
        again = await server.client()
        r = await again.request({"type": "hello", "hello": {"version": "1.0",
                                                            "resumeid": plain.resume_id}})
        assert r["hello"]["sessionid"] == plain.session_id
        assert await messages(again) == [chat_event({"refresh": True})]
