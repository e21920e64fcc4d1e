"""switchto over the real backend API: Nextcloud asks Talk sessions to move to a room."""

from __future__ import annotations

from typing import Any

import trio

from tests.signaling.conftest import Server
from tests.signaling.test_signaling_backend_room_api import post, two_in_room


def _switchto(m: dict[str, Any]) -> bool:
    return m.get("type") == "event" and m["event"].get("type") == "switchto"


def _event(roomid: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"roomid": roomid}
    if details is not None:
        body["details"] = details
    return {"type": "event", "event": {"target": "room", "type": "switchto", "switchto": body}}


async def test_list_form_reaches_only_the_listed_sessions(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        r = await post(server, "r1", {"type": "switchto", "switchto": {
            "roomid": "breakout-1", "sessions": ["talk-a", "0", "talk-unknown"]}})
        assert r.status_code == 200 and r.json() == {}
        assert await a.recv() == _event("breakout-1")
        await b.nothing(0.3)
        await a.nothing(0.1)  # one event, not one per listed id


async def test_map_form_with_and_without_details(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        r = await post(server, "r1", {"type": "switchto", "switchto": {
            "roomid": "parent", "sessions": {
                "talk-a": {"foo": "bar"}, "talk-b": None, "0": {"x": 1}}}})
        assert r.status_code == 200 and r.json() == {}
        assert await a.recv() == _event("parent", {"foo": "bar"})
        assert await b.recv() == _event("parent")


async def test_nothing_resolved_or_unknown_room_sends_nothing(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        for sessions in (["0", "nobody"], {"0": None}, []):
            r = await post(server, "r1", {"type": "switchto", "switchto": {
                "roomid": "x", "sessions": sessions}})
            assert r.status_code == 200 and r.json() == {}
        # the source room is not on this server
        r = await post(server, "other-room", {"type": "switchto", "switchto": {
            "roomid": "x", "sessions": ["talk-a"]}})
        assert r.status_code == 200
        await a.nothing(0.3)
        await b.nothing(0.1)


async def test_a_session_that_left_its_room_gets_nothing(server: Server) -> None:
    with trio.fail_after(20):
        a, b = await two_in_room(server)
        await b.request({"type": "room", "room": {"roomid": ""}})
        await a.drain(0.1)
        r = await post(server, "r1", {"type": "switchto", "switchto": {
            "roomid": "x", "sessions": ["talk-a", "talk-b"]}})
        assert r.status_code == 200
        assert await a.recv() == _event("x")
        await b.nothing(0.3)


async def test_bad_sessions_shape_is_an_http_error(server: Server) -> None:
    with trio.fail_after(20):
        a, _ = await two_in_room(server)
        r = await post(server, "r1", {"type": "switchto", "switchto": {
            "roomid": "x", "sessions": "talk-a"}})
        assert r.status_code == 500 and r.text == "Error while processing\n"
        r = await post(server, "r1", {"type": "switchto", "switchto": {
            "roomid": 5, "sessions": ["talk-a"]}})
        assert r.status_code == 400 and r.text == "Could not read body\n"
        await a.nothing(0.2)
        # still serving
        r = await post(server, "r1", {"type": "switchto", "switchto": {
            "roomid": "y", "sessions": ["talk-a"]}})
        assert r.status_code == 200
        assert await a.recv() == _event("y")
        assert "switchto" in r.headers["x-spreed-signaling-features"].split(", ")
