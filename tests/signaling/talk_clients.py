"""Helpers for the Talk feature tests over the real WebSocket: hellos with client features,
rooms with members, filters for the events Talk reads."""

from __future__ import annotations

from typing import Any

from tests.signaling.conftest import Client, Server


async def hello(c: Client, userid: str, features: list[str] | None = None) -> dict[str, Any]:
    """A v1 hello as Talk sends it, announcing client `features`."""
    url = c.nextcloud.url + "ocs/v2.php/apps/spreed/api/v3/signaling/backend"
    body: dict[str, Any] = {"version": "1.0", "auth": {"url": url, "params": {"userid": userid}}}
    if features is not None:
        body["features"] = features
    reply = await c.request({"type": "hello", "hello": body})
    assert reply["type"] == "hello", reply
    c.session_id = reply["hello"]["sessionid"]
    c.resume_id = reply["hello"]["resumeid"]
    return reply


async def in_room(server: Server, room: str, *users: str,
                  features: dict[str, list[str]] | None = None) -> list[Client]:
    """One client per user id, all in `room` (Talk session `talk-<user>`), events drained."""
    clients = []
    for user in users:
        c = await server.client()
        await hello(c, user, (features or {}).get(user))
        assert (await c.join(room, f"talk-{user}"))["type"] == "room"
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
