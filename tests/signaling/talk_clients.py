"""Helpers for the Talk feature tests over the real WebSocket: hellos with client features,
rooms with members, filters for the events Talk reads."""

from __future__ import annotations

import json
from typing import Any

import httpx

from relay.signaling.backend import checksum, random_string
from tests.signaling.conftest import TALK_PATH, Client, Server


async def hello(c: Client, userid: str, features: list[str] | None = None) -> dict[str, Any]:
    """A v1 hello as Talk sends it, announcing client `features`; it must succeed."""
    reply = await c.hello(userid, features=features)
    assert reply["type"] == "hello", reply
    return reply


async def hello_v2(c: Client, token: Any, *, url: str | None = None,
                   auth_type: str | None = None, version: str = "2.0",
                   features: list[str] | None = None) -> dict[str, Any]:
    """A v2 hello as Talk sends it: `token` the JWT, `auth_type` "federation" for a link."""
    auth: dict[str, Any] = {
        "url": url if url is not None else c.nextcloud.url + TALK_PATH,
        "params": {} if token is None else {"token": token},
    }
    if auth_type is not None:
        auth["type"] = auth_type
    hello: dict[str, Any] = {"version": version, "auth": auth}
    if features is not None:
        hello["features"] = features
    return await c.say_hello(hello)


async def room_request(
    http_url: str, room: str, payload: Any, *, secret: str, backend: str | None,
    headers: dict[str, Any] | None = None, raw: bytes | None = None,
) -> httpx.Response:
    """`POST /api/v1/room/{room}` signed as Talk's BackendNotifier signs it (`backend`: the
    `Spreed-Signaling-Backend` header, None to leave it out)."""
    body = raw if raw is not None else json.dumps(payload).encode()
    rnd = random_string(64)
    hdrs: dict[str, Any] = {"Content-Type": "application/json",
                            "Spreed-Signaling-Random": rnd,
                            "Spreed-Signaling-Checksum": checksum(secret.encode(), rnd, body)}
    if backend is not None:
        hdrs["Spreed-Signaling-Backend"] = backend
    hdrs.update(headers or {})
    async with httpx.AsyncClient(base_url=http_url) as c:
        return await c.post(f"/api/v1/room/{room}", content=body, headers=hdrs)


async def in_room(server: Server, room: str, *users: str,
                  features: dict[str, list[str]] | None = None,
                  talk_sessions: list[str] | None = None) -> list[Client]:
    """One client per user id, all in `room` (Talk session `talk-<user>` unless
    `talk_sessions` names them), events drained."""
    clients = []
    for i, user in enumerate(users):
        c = await server.client()
        await hello(c, user, (features or {}).get(user))
        sid = talk_sessions[i] if talk_sessions is not None else f"talk-{user}"
        assert (await c.join(room, sid))["type"] == "room"
        clients.append(c)
    for c in clients:
        await c.drain(0.1)
    return clients


def is_event(target: str, kind: str) -> Any:
    def pred(m: dict[str, Any]) -> bool:
        ev = m.get("event") if m.get("type") == "event" else None
        return isinstance(ev, dict) and ev.get("target") == target and ev.get("type") == kind

    return pred


def transient(m: dict[str, Any]) -> bool:
    return m.get("type") == "transient"
