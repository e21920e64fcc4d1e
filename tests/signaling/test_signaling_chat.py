"""chat-relay rewriting per receiving session (talk-features.md §6.1; upstream
clientsession_test.go TestFeatureChatRelay, TestPermissionHideDisplayNames)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.signaling.chat import is_chat_refresh, room_message_event, room_message_events

ROOM = "test-room"
COMMENT = {"foo": "bar", "baz": True, "lala": {"one": "eins"}, "token": ROOM}
COMMENT2 = {"hello": "world"}


def ev(data: Any) -> dict[str, Any]:
    return {"type": "event", "event": {"target": "room", "type": "message",
                                       "message": {"roomid": ROOM, "data": data}}}


def events(data: Any, relay: bool, hide: bool = False) -> list[dict[str, Any]]:
    features = ["encryption", "chat-relay"] if relay else ["encryption"]
    return room_message_events(ROOM, data, features, hide)


REFRESH = {"type": "chat", "chat": {"refresh": True}}


def test_new_style_single_comment() -> None:
    data = {"type": "chat", "chat": {"refresh": True, "comment": COMMENT}}
    assert events(data, relay=True) == [ev({"type": "chat", "chat": {"comment": COMMENT}})]
    assert events(data, relay=False) == [ev(REFRESH)]


def test_new_style_several_comments() -> None:
    data = {"type": "chat", "chat": {"refresh": True, "comments": [COMMENT, COMMENT2]}}
    assert events(data, relay=True) == [
        ev({"type": "chat", "chat": {"comment": COMMENT}}),
        ev({"type": "chat", "chat": {"comment": COMMENT2}}),
    ]
    assert events(data, relay=False) == [ev(REFRESH)]


def test_comment_goes_before_comments_and_nulls_are_dropped() -> None:
    data = {"type": "chat", "chat": {"refresh": True, "comment": {"id": 1},
                                     "comments": [None, {"id": 2}, None, {"id": 3}]}}
    assert [e["event"]["message"]["data"]["chat"]["comment"]["id"]
            for e in events(data, relay=True)] == [1, 2, 3]


def test_old_style_refresh_is_unchanged() -> None:
    data = {"type": "chat", "chat": {"refresh": True}, "extra": 1}
    for relay in (True, False):
        for hide in (True, False):
            assert events(data, relay, hide) == [ev(data)]


def test_rewrite_keeps_only_type_and_chat_fields() -> None:
    data = {"type": "chat", "extra": "x",
            "chat": {"refresh": True, "comment": COMMENT, "other": 1}}
    assert events(data, relay=True) == [ev({"type": "chat", "chat": {"comment": COMMENT}})]
    assert events(data, relay=False) == [ev(REFRESH)]


def test_comment_without_refresh_goes_to_everyone_per_comment() -> None:
    data = {"type": "chat", "chat": {"comments": [COMMENT, COMMENT2]}}
    expected = [ev({"type": "chat", "chat": {"comment": COMMENT}}),
                ev({"type": "chat", "chat": {"comment": COMMENT2}})]
    assert events(data, relay=False) == expected
    assert events(data, relay=True) == expected


def test_hide_displaynames_blanks_actor_display_name() -> None:
    comment = {"actorDisplayName": "John Doe", "baz": True, "lala": {"one": "eins"}}
    data = {"type": "chat", "chat": {"comment": comment}}
    assert events(data, relay=False, hide=True) == [
        ev({"type": "chat", "chat": {"comment": {**comment, "actorDisplayName": ""}}})]
    assert events(data, relay=False, hide=False) == [
        ev({"type": "chat", "chat": {"comment": comment}})]
    assert comment["actorDisplayName"] == "John Doe"


def test_hide_displaynames_with_chat_relay() -> None:
    data = {"type": "chat", "chat": {"refresh": True, "comments": [
        {"actorDisplayName": "A"}, {"actorDisplayName": ""}, {"id": 1}, "text"]}}
    assert events(data, relay=True, hide=True) == [
        ev({"type": "chat", "chat": {"comment": {"actorDisplayName": ""}}}),
        ev({"type": "chat", "chat": {"comment": {"actorDisplayName": ""}}}),
        ev({"type": "chat", "chat": {"comment": {"id": 1}}}),
        ev({"type": "chat", "chat": {"comment": "text"}}),
    ]


@pytest.mark.parametrize("data", [
    {"type": "other", "chat": {"refresh": True, "comment": COMMENT}},
    {"type": "chat"},
    {"type": "chat", "chat": None},
    {"type": 5, "chat": {"comment": COMMENT}},  # unreadable: passes as is
    {"type": "chat", "chat": {"refresh": "yes", "comment": COMMENT}},
    {"type": "chat", "chat": {"comments": {"a": COMMENT}}},
    {"type": "chat", "chat": "refresh"},
    "text",
    [1, 2],
])
def test_not_a_readable_chat_payload_is_unchanged(data: Any) -> None:
    assert events(data, relay=True, hide=True) == [ev(data)]


def test_null_data() -> None:
    assert events(None, relay=True) == [{"type": "event", "event": {
        "target": "room", "type": "message", "message": {"roomid": ROOM}}}]


def test_null_comments_only_are_iterated_like_upstream() -> None:
    data = {"type": "chat", "chat": {"refresh": True, "comments": [None, None]}}
    assert events(data, relay=True) == [ev(REFRESH), ev(REFRESH)]


def test_room_message_event_shape() -> None:
    assert room_message_event("r", {"a": 1}) == {"type": "event", "event": {
        "target": "room", "type": "message", "message": {"roomid": "r", "data": {"a": 1}}}}


def test_is_chat_refresh() -> None:
    assert is_chat_refresh(ev(REFRESH))
    assert not is_chat_refresh(ev({"type": "chat", "chat": {"refresh": False}}))
    assert not is_chat_refresh(ev({"type": "chat", "chat": {"comment": COMMENT}}))
    assert not is_chat_refresh(ev({"type": "other", "chat": {"refresh": True}}))
    assert not is_chat_refresh({"type": "message", "message": {"data": REFRESH}})
    assert not is_chat_refresh({"type": "event", "event": {"type": "message",
                                                           "message": {"roomid": ROOM}}})
