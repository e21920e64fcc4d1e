"""The signaling state machine alone: no clock, no sockets, no trio; time is an argument."""

from __future__ import annotations

import pytest

from relay.config.signaling import BackendConfig
from relay.signaling import state as st
from relay.signaling.permissions import Permissions
from relay.signaling.state import Session, SignalingState

NC1 = BackendConfig("nc1", ("https://one.example/",), b"s1")
NC2 = BackendConfig("nc2", ("https://two.example/",), b"s2")
URL = "https://one.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend"


def make_state() -> SignalingState:
    return SignalingState(session_expire=30.0, join_timeout=10.0)


def add(state: SignalingState, user_id: str = "", *, backend: BackendConfig = NC1,
        now: float = 0.0) -> Session:
    return state.create(backend=backend, backend_url=URL, user_id=user_id, user=None,
                        features=(), now=now)


# --- sessions -------------------------------------------------------------------------


def test_create_gives_distinct_ids_and_registers() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    assert a.public_id != b.public_id and a.private_id != b.private_id
    assert a.public_id != a.private_id
    assert state.get(a.public_id) is a and state.is_live(b)
    assert state.count("nc1") == 2 and state.count("nc2") == 0
    assert state.count("nc1", st.INTERNAL) == 0


def test_resume_by_private_id_clears_expiry() -> None:
    state = make_state()
    a = add(state, "alice")
    state.detach(a, now=100.0)
    assert a.expires_at == 130.0
    assert state.resume(a.public_id, now=110.0) is None  # the public id is no resume id
    assert state.resume(a.private_id, now=110.0) is a
    assert a.expires_at is None and a.last_activity == 110.0
    assert state.due(now=500.0) == st.Due([], [])


def test_sessions_with_a_socket_resume_virtual_ones_do_not() -> None:
    state = make_state()
    s = state.create(backend=NC1, backend_url=URL, user_id="", user=None, features=(),
                     now=0.0, client_type=st.INTERNAL)
    v = state.create(backend=NC1, backend_url=URL, user_id="", user=None, features=(),
                     now=0.0, client_type=st.VIRTUAL)
    assert state.resume(v.private_id, now=1.0) is None
    assert state.resume(s.private_id, now=1.0) is s


def test_detached_session_expires_at_its_deadline() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    state.detach(a, now=10.0)
    assert state.due(now=39.9) == st.Due([], [])
    due = state.due(now=40.0)
    assert due.expired == [a] and due.join_timed_out == []
    assert state.is_live(a)  # the caller removes it
    state.remove(a)
    assert not state.is_live(a) and state.is_live(b)
    assert state.resume(a.private_id, now=41.0) is None
    assert state.due(now=100.0) == st.Due([], [])


def test_anonymous_session_must_join_in_time() -> None:
    state = make_state()
    guest = add(state, "", now=5.0)
    user = add(state, "alice", now=5.0)
    assert guest.join_deadline == 15.0 and user.join_deadline is None
    assert state.due(now=15.0).join_timed_out == [guest]
    late = add(state, "", now=20.0)
    state.join(late, "r", "")
    assert late.join_deadline is None
    assert late not in state.due(now=100.0).join_timed_out


def test_touch_records_last_activity() -> None:
    state = make_state()
    a = add(state, "alice", now=1.0)
    assert a.last_activity == 1.0
    state.touch(a, now=7.5)
    assert a.last_activity == 7.5


def test_remove_leaves_the_room_and_is_idempotent() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    state.join(a, "r", "talk-a")
    state.join(b, "r", "talk-b")
    left = state.remove(a)
    assert left is not None and left.room_session_id == "talk-a" and not left.room_empty
    assert state.by_room_session("nc1", "talk-a") is None
    assert state.remove(a) is None
    assert list(left.room.sessions) == [b.public_id]


# --- rooms ----------------------------------------------------------------------------


def test_join_reports_who_was_there_and_creation() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    first = state.join(a, "r", "talk-a", properties={"name": "R"},
                       permissions=Permissions.of({"publish-media"}))
    assert first.created and first.others == []
    assert first.room.properties == {"name": "R"}
    assert a.may("publish-media") and not a.may("control")
    second = state.join(b, "r", "talk-b")
    assert b.may("control") and not b.may("hide-displaynames")  # no list from Nextcloud yet
    assert not second.created and second.room is first.room
    assert second.others == [{"sessionid": a.public_id, "userid": "alice",
                              "roomsessionid": "talk-a"}]
    assert first.room.properties == {"name": "R"}  # kept when the answer has none
    assert state.by_room_session("nc1", "talk-b") is b


def test_same_room_id_on_two_backends_is_two_rooms() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob", backend=NC2)
    ra, rb = state.join(a, "r", "").room, state.join(b, "r", "").room
    assert ra is not rb
    assert state.room("nc1", "r") is ra and state.room("nc2", "r") is rb


def test_leave_announces_and_forgets_an_empty_room() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    room = state.join(a, "r", "talk-a").room
    state.join(b, "r", "")
    a.in_call = 1
    left = state.leave(a)
    assert left == st.Left(a, room, "talk-a", False)
    assert a.room is None and a.in_call == 0 and a.room_session_id == ""
    assert state.leave(a) is None
    last = state.leave(b)
    assert last is not None and last.room_empty
    assert state.room("nc1", "r") is None


def test_set_room_session_moves_the_index() -> None:
    state = make_state()
    a = add(state, "alice")
    state.join(a, "r", "old")
    assert not state.set_room_session(a, "old")
    assert state.set_room_session(a, "new")
    assert state.by_room_session("nc1", "old") is None
    assert state.by_room_session("nc1", "new") is a


def test_close_room_takes_everyone_out() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    room = state.join(a, "r", "talk-a").room
    state.join(b, "r", "talk-b")
    lefts = state.close_room(room)
    assert [(x.session, x.room_session_id) for x in lefts] == [(a, "talk-a"), (b, "talk-b")]
    assert all(x.room_empty for x in lefts)
    assert a.room is None and b.room is None and state.rooms == {}
    assert state.by_room_session("nc1", "talk-b") is None


def test_properties_and_permissions() -> None:
    state = make_state()
    a = add(state, "alice")
    room = state.join(a, "r", "", properties={"v": 1}).room
    assert not state.update_properties(room, {"v": 1})
    assert state.update_properties(room, {"v": 2}) and room.properties == {"v": 2}
    assert state.set_permissions(room, a.public_id, Permissions.of({"control"}))
    assert a.may("control") and not a.may("publish-audio")
    assert state.set_permissions(room, a.public_id, Permissions.of(()))
    assert not a.may("control")
    assert not state.set_permissions(room, "nobody", Permissions.of(()))


def test_pings_list_talk_sessions_per_room() -> None:
    state = make_state()
    a, b, c = add(state, "alice"), add(state, ""), add(state, "carol")
    state.join(a, "r", "talk-a")
    state.join(b, "r", "talk-b")
    state.join(c, "quiet", "")  # no Talk session: nothing to keep alive
    pings = state.pings()
    assert len(pings) == 1 and pings[0].room.id == "r"
    assert pings[0].entries == [{"sessionid": "talk-a", "userid": "alice"},
                                {"sessionid": "talk-b"}]


# --- calls ----------------------------------------------------------------------------


def test_in_call_changes_report_call_start_once() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    state.join(a, "r", "")
    state.join(b, "r", "")
    first = state.set_in_call("nc1", "r", a.public_id, 7)
    assert first == st.InCallChange(a, joined_call=True, call_started=True)
    assert a.in_call == 7 and a.is_in_call
    second = state.set_in_call("nc1", "r", b.public_id, 1)
    assert second == st.InCallChange(b, joined_call=True, call_started=False)
    again = state.set_in_call("nc1", "r", b.public_id, 3)
    assert again == st.InCallChange(b, joined_call=False, call_started=False)
    out = state.set_in_call("nc1", "r", b.public_id, 0)
    assert out is not None and not b.is_in_call
    assert state.set_in_call("nc1", "elsewhere", a.public_id, 1) is None
    assert state.set_in_call("nc2", "r", a.public_id, 1) is None


def test_in_call_all_joins_clients_and_ends_the_call() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    room = state.join(a, "r", "").room
    state.join(b, "r", "")
    state.set_in_call("nc1", "r", a.public_id, 1)
    joined = state.set_in_call_all(room, 1)
    assert joined.notify == [a, b] and [c.session for c in joined.changes] == [b]
    assert state.set_in_call_all(room, 1) == st.CallAll([], [])  # nothing changed
    ended = state.set_in_call_all(room, 0)
    assert ended.notify == [a, b] and not a.is_in_call and not b.is_in_call
    assert state.set_in_call_all(room, 0) == st.CallAll([], [])


# --- routing --------------------------------------------------------------------------


def test_route_to_a_session() -> None:
    state = make_state()
    a, b = add(state, "alice"), add(state, "bob")
    other = add(state, "eve", backend=NC2)
    assert state.route(a, "session", session_id=b.public_id) == st.Route(st.DIRECT, target=b)
    assert state.route(a, "session", session_id=a.public_id).kind == st.DROP
    assert state.route(a, "session", session_id=other.public_id).kind == st.DROP
    assert state.route(a, "session", session_id="elsewhere").kind == st.SESSION


def test_route_to_a_user() -> None:
    state = make_state()
    a = add(state, "alice")
    assert state.route(a, "user", user_id="bob").kind == st.USER
    assert state.route(a, "user", user_id="alice").kind == st.DROP


@pytest.mark.parametrize("kind", ["room", "call"])
def test_route_to_the_room_or_call(kind: str) -> None:
    state = make_state()
    a, b, c = add(state, "alice"), add(state, "bob"), add(state, "carol")
    assert state.route(a, kind).kind == st.DROP  # in no room
    room = state.join(a, "r", "").room
    state.join(b, "r", "")
    state.join(c, "r", "")
    route = state.route(a, kind)
    assert route == st.Route(st.ROOM, room=room, call_only=kind == "call")
    state.set_in_call("nc1", "r", c.public_id, 1)
    expected = [c] if kind == "call" else [b, c]
    assert room.recipients(a.public_id, route.call_only) == expected
