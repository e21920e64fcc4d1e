"""Talk permissions: defaults, sources and delivery filters (talk-features.md §2)."""

from __future__ import annotations

import pytest

from relay.signaling import permissions as perm
from relay.signaling.permissions import Permissions, PermissionUpdate
from relay.signaling.protocol import SignalingError


def test_names_are_upstreams() -> None:
    assert perm.NAMES == (
        "publish-media", "publish-audio", "publish-video", "publish-screen", "control",
        "transient-data", "hide-displaynames",
    )


@pytest.mark.parametrize("name", [n for n in perm.NAMES if n != "hide-displaynames"])
def test_before_first_set_everything_but_hide_displaynames_is_granted(name: str) -> None:
    p = Permissions()
    assert not p.is_set
    assert p.has(name)
    assert not p.has("hide-displaynames")
    assert not p.hide_displaynames
    assert p.may_control and p.may_write_transient


def test_unknown_name_is_granted_until_a_list_is_set() -> None:
    assert Permissions().has("future-permission")
    assert not Permissions.of(["control"]).has("future-permission")


def test_after_a_set_exactly_the_listed_ones() -> None:
    p = Permissions.of(["publish-audio", "hide-displaynames", "no-such-name"])
    assert p.is_set
    assert p.has("publish-audio")
    assert p.hide_displaynames
    assert p.has("no-such-name")  # kept as given; nothing asks for it
    assert not p.may_control
    assert not p.may_write_transient
    assert not p.has("publish-video")
    assert p.has_any("publish-media", "publish-audio")
    assert not p.has_any("publish-media", "publish-video")
    assert not p.has_any()


def test_empty_list_grants_nothing() -> None:
    p = Permissions.of([])
    assert p.is_set
    assert not any(p.has(n) for n in perm.NAMES)


def test_join_answer_permissions() -> None:
    got = perm.from_join_answer(
        {"roomid": "r", "permissions": ["publish-audio", "publish-video", "control"]}
    )
    assert got == Permissions.of(["control", "publish-audio", "publish-video"])
    assert got is not None and got.may_control


@pytest.mark.parametrize("room", [{"roomid": "r"}, {"roomid": "r", "permissions": None}, "x"])
def test_join_answer_without_permissions_keeps_the_current_ones(room: object) -> None:
    assert perm.from_join_answer(room) is None


def test_join_answer_with_empty_list_revokes_everything() -> None:
    assert perm.from_join_answer({"permissions": []}) == Permissions.of([])


@pytest.mark.parametrize("bad", [["control", 1], "control", {"control": True}])
def test_unreadable_join_permissions_fail_the_join(bad: object) -> None:
    with pytest.raises(SignalingError) as exc:
        perm.from_join_answer({"roomid": "r", "permissions": bad})
    assert exc.value.code == "internal_error"


def test_participants_changed_updates() -> None:
    changed = [
        {"sessionId": "s1", "permissions": ["publish-audio"], "participantPermissions": 5},
        {"sessionId": "s2", "inCall": 1},  # no permissions key: no update
        {"sessionId": "s3", "permissions": ["control", 7]},  # bad element: entry skipped
        {"sessionId": "s4", "permissions": []},
        {"sessionId": 5, "permissions": ["control"]},  # session id not a string
        {"permissions": ["control"]},
        {"sessionId": "s5", "permissions": "control"},
        {"sessionId": "s6", "permissions": None},
        "not-an-entry",
    ]
    assert perm.updates_from_changed(changed) == [
        PermissionUpdate("s1", Permissions.of(["publish-audio"])),
        PermissionUpdate("s4", Permissions.of([])),
    ]
    assert perm.updates_from_changed(None) == []


def test_strip_permissions_from_every_user_entry() -> None:
    users = [
        {"sessionId": "a", "inCall": 1, "permissions": ["control"], "participantPermissions": 254},
        {"sessionId": "b"},
    ]
    assert perm.strip_permissions(users) == [
        {"sessionId": "a", "inCall": 1, "participantPermissions": 254},
        {"sessionId": "b"},
    ]
    assert users[0]["permissions"] == ["control"]  # input untouched
    assert perm.strip_permissions(None) == []


def test_hide_join_displaynames() -> None:
    entries = [
        {"sessionid": "a", "userid": "u1", "user": {"displayname": "Alice", "id": "u1"}},
        {"sessionid": "b", "userid": "u2", "user": {"displayname": "Bob"}},
        {"sessionid": "c", "userid": ""},
        {"sessionid": "d", "userid": "u4", "user": "opaque"},
        {"sessionid": "e", "userid": "u5", "user": {"type": "phone"}},
    ]
    assert perm.hide_join_displaynames(entries) == [
        {"sessionid": "a", "userid": "u1", "user": {"id": "u1"}},
        {"sessionid": "b", "userid": "u2"},
        {"sessionid": "c", "userid": ""},
        {"sessionid": "d", "userid": "u4", "user": "opaque"},
        {"sessionid": "e", "userid": "u5", "user": {"type": "phone"}},
    ]
    assert entries[0]["user"] == {"displayname": "Alice", "id": "u1"}


def _join(user: object) -> dict[str, object]:
    return {"type": "event", "event": {"target": "room", "type": "join", "join": [
        {"sessionid": "a", "userid": "u", "user": user}]}}


def test_filter_for_session_join_event() -> None:
    msg = _join({"displayname": "Alice"})
    assert perm.filter_for_session(msg, Permissions()) is msg
    assert perm.filter_for_session(msg, Permissions.of(["hide-displaynames"])) == {
        "type": "event", "event": {"target": "room", "type": "join", "join": [
            {"sessionid": "a", "userid": "u"}]}}


def _nick() -> dict[str, object]:
    return {"type": "message", "message": {
        "sender": {"type": "session", "sessionid": "b"},
        "data": {"type": "nickChanged", "message": "from-1-to-2"}}}


def test_filter_for_session_drops_nick_changed_only_when_hidden() -> None:
    msg = _nick()
    assert perm.filter_for_session(msg, Permissions()) is msg
    assert perm.filter_for_session(msg, Permissions.of(["control"])) is msg
    assert perm.filter_for_session(msg, Permissions.of(["hide-displaynames"])) is None


@pytest.mark.parametrize("data", [
    {"type": "offer"}, "nickChanged", {"type": 5}, None, {"kind": "nickChanged"},
])
def test_other_messages_pass_under_hide_displaynames(data: object) -> None:
    msg = {"type": "message", "message": {"sender": {"type": "session", "sessionid": "b"},
                                          "data": data}}
    assert perm.filter_for_session(msg, Permissions.of(["hide-displaynames"])) is msg


def test_control_nick_changed_is_not_filtered() -> None:
    msg = {"type": "control", "control": {"data": {"type": "nickChanged"}}}
    assert perm.filter_for_session(msg, Permissions.of(["hide-displaynames"])) is msg
