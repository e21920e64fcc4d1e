"""Backend `switchto` requests (talk-features.md §3; upstream hub_test.go TestSwitchTo*)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.signaling.switchto import (
    SwitchTo,
    SwitchToError,
    SwitchToTarget,
    parse_switchto,
    switchto_event,
)

ROOM_SESSIONS = {"roomsession1": "pub1", "roomsession2": "pub2", "0": "pub-zero"}


def switch_event(room: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"roomid": room}
    if details is not None:
        body["details"] = details
    return {"type": "event", "event": {"target": "room", "type": "switchto", "switchto": body}}


def test_list_form() -> None:
    req = parse_switchto(
        {"roomid": "test-room-2", "sessions": ["roomsession1", "roomsession2"]}, ROOM_SESSIONS)
    assert req == SwitchTo("test-room-2", (SwitchToTarget("pub1"), SwitchToTarget("pub2")))
    assert req.events() == [("pub1", switch_event("test-room-2")),
                            ("pub2", switch_event("test-room-2"))]


def test_map_form_with_details() -> None:
    req = parse_switchto({"roomid": "test-room-2", "sessions": {
        "roomsession1": {"foo": "bar"}, "roomsession2": {"bar": "baz"}}}, ROOM_SESSIONS)
    assert req.events() == [("pub1", switch_event("test-room-2", {"foo": "bar"})),
                            ("pub2", switch_event("test-room-2", {"bar": "baz"}))]


def test_map_form_mixed_null_details() -> None:
    req = parse_switchto({"roomid": "test-room-2", "sessions": {
        "roomsession1": {"foo": "bar"}, "roomsession2": None}}, ROOM_SESSIONS)
    events = dict(req.events())
    assert events["pub1"] == switch_event("test-room-2", {"foo": "bar"})
    assert events["pub2"] == {"type": "event", "event": {
        "target": "room", "type": "switchto", "switchto": {"roomid": "test-room-2"}}}


def test_non_null_empty_details_are_sent() -> None:
    req = parse_switchto({"roomid": "r", "sessions": {"roomsession1": {}}}, ROOM_SESSIONS)
    assert req.events() == [("pub1", switch_event("r", {}))]


def test_skips_not_in_meeting_and_unknown_sessions() -> None:
    assert parse_switchto({"roomid": "r", "sessions": ["0", "unknown", None, ""]},
                          ROOM_SESSIONS).targets == ()
    assert parse_switchto({"roomid": "r", "sessions": {"0": {"a": 1}, "unknown": None}},
                          ROOM_SESSIONS).targets == ()


@pytest.mark.parametrize("sessions", [None, [], {}])
def test_nothing_to_switch(sessions: Any) -> None:
    payload: dict[str, Any] = {"roomid": "r"}
    if sessions is not None:
        payload["sessions"] = sessions
    assert parse_switchto(payload, ROOM_SESSIONS) == SwitchTo("r")


def test_callable_resolver() -> None:
    asked: list[str] = []

    def resolve(rsid: str) -> str | None:
        asked.append(rsid)
        return "pub-" + rsid if rsid.startswith("talk") else None

    req = parse_switchto({"roomid": "r", "sessions": ["talk1", "0", "other"]}, resolve)
    assert [t.session_id for t in req.targets] == ["pub-talk1"]
    assert asked == ["talk1", "other"]


@pytest.mark.parametrize("payload", [
    {"roomid": "r", "sessions": "roomsession1"},
    {"roomid": "r", "sessions": 5},
    {"roomid": "r", "sessions": True},
    {"roomid": "r", "sessions": ["roomsession1", 7]},
])
def test_unusable_sessions(payload: Any) -> None:
    with pytest.raises(SwitchToError) as exc:
        parse_switchto(payload, ROOM_SESSIONS)
    assert (exc.value.status, exc.value.message) == (500, "Error while processing")


@pytest.mark.parametrize("payload", [{"roomid": 5, "sessions": []}, "x", None])
def test_unreadable(payload: Any) -> None:
    with pytest.raises(SwitchToError) as exc:
        parse_switchto(payload, ROOM_SESSIONS)
    assert (exc.value.status, exc.value.message) == (400, "Could not read body")


def test_event_builder() -> None:
    assert switchto_event("r") == {"type": "event", "event": {
        "target": "room", "type": "switchto", "switchto": {"roomid": "r"}}}
    assert switchto_event("r", [1])["event"]["switchto"] == {"roomid": "r", "details": [1]}
