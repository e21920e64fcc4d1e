"""Internal clients and virtual sessions (talk-features.md §5.1-5.3; upstream
virtualsession_test.go, hub_transient_data_test.go internal-client part)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from relay.config.signaling import BackendConfig
from relay.signaling import internal as i
from relay.signaling.dialout import CallStatus, DialoutMessage
from relay.signaling.protocol import SignalingError

SECRET = b"internal-secret"
NC = BackendConfig("nc1", ("https://cloud.example.com/",), b"backend-secret")
RANDOM = "r" * 32


def token(random: str, secret: bytes = SECRET) -> str:
    return hmac.new(secret, random.encode(), hashlib.sha256).hexdigest()


def error_of(fn: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(SignalingError) as exc:
        fn(*args)
    return exc.value.code, exc.value.message


# --- hello ------------------------------------------------------------------------------------


def test_auth_params() -> None:
    params = i.parse_auth_params(
        {"random": RANDOM, "token": "t", "backend": "HTTPS://Cloud.Example.com:443"})
    assert params == i.InternalAuthParams(RANDOM, "t", "https://cloud.example.com/")


@pytest.mark.parametrize("params", [
    None, "x", {"random": RANDOM, "token": "t"}, {"random": RANDOM, "token": "t", "backend": ""},
    {"random": 5, "token": "t", "backend": "https://x/"},
])
def test_auth_params_invalid(params: Any) -> None:
    assert error_of(i.parse_auth_params, params)[0] == "invalid_format"


def test_authenticate() -> None:
    params = i.parse_auth_params(
        {"random": RANDOM, "token": token(RANDOM), "backend": "https://cloud.example.com/sub"})
    assert i.authenticate(params, SECRET, i.backend_finder([NC])) is NC


def test_authenticate_without_secret() -> None:
    params = i.InternalAuthParams(RANDOM, token(RANDOM), NC.urls[0])
    assert error_of(i.authenticate, params, b"", i.backend_finder([NC])) == (
        "invalid_client_type", "The client type is not supported.")


@pytest.mark.parametrize(("rnd", "tok"), [
    ("r" * 31, token("r" * 31)),  # too short, even with the right token
    (RANDOM, token(RANDOM, b"other")),
    (RANDOM, token(RANDOM).upper()),
    (RANDOM, ""),
])
def test_authenticate_bad_token(rnd: str, tok: str) -> None:
    params = i.InternalAuthParams(rnd, tok, NC.urls[0])
    assert error_of(i.authenticate, params, SECRET, i.backend_finder([NC])) == (
        "invalid_token", "The passed token is invalid.")


def test_authenticate_unknown_backend() -> None:
    params = i.InternalAuthParams(RANDOM, token(RANDOM), "https://other.example.com/")
    assert error_of(i.authenticate, params, SECRET, i.backend_finder([NC])) == (
        "invalid_backend", "The backend URL is not supported.")
    compat = BackendConfig("compat", (), b"s")
    assert i.authenticate(params, SECRET, i.backend_finder([NC], compat)) is compat


def test_initial_in_call_of_internal_sessions() -> None:
    assert i.initial_in_call([]) == 3
    assert i.initial_in_call(["start-dialout"]) == 3
    assert i.initial_in_call(["internal-incall"]) == 0


# --- internal messages -----------------------------------------------------------------------


def test_addsession_full() -> None:
    cmd = i.parse_internal({"type": "addsession", "addsession": {
        "sessionid": "sip-1", "roomid": "room", "userid": "phone", "user": {"type": "phone"},
        "flags": 5, "incall": 1, "options": {"actorId": "a1", "actorType": "phones"}}})
    assert cmd == i.AddSession("sip-1", "room", "phone", {"type": "phone"}, 5, 1,
                               i.ActorOptions("a1", "phones"))


def test_addsession_defaults() -> None:
    cmd = i.parse_internal(
        {"type": "addsession", "addsession": {"sessionid": "s", "roomid": "r"}})
    assert cmd == i.AddSession("s", "r")
    assert isinstance(cmd, i.AddSession)
    assert i.virtual_in_call(cmd, []) == 9
    assert i.virtual_in_call(cmd, ["internal-incall"]) == 0
    assert i.virtual_in_call(i.AddSession("s", "r", in_call=7), ["internal-incall"]) == 7


def test_negative_in_call_reads_as_zero() -> None:
    add = i.parse_internal({"type": "addsession", "addsession": {
        "sessionid": "s", "roomid": "r", "incall": -3}})
    assert isinstance(add, i.AddSession)
    assert i.virtual_in_call(add, []) == 0
    assert i.parse_internal({"type": "incall", "incall": {"incall": -1}}) == i.InCall(0)
    assert i.parse_internal({"type": "updatesession", "updatesession": {
        "sessionid": "s", "roomid": "r", "incall": -2}}) == i.UpdateSession("s", "r", None, 0)


def test_update_remove_incall() -> None:
    assert i.parse_internal({"type": "updatesession", "updatesession": {
        "sessionid": "s", "roomid": "r", "flags": 0}}) == i.UpdateSession("s", "r", 0, None)
    assert i.parse_internal({"type": "updatesession", "updatesession": {
        "sessionid": "s", "roomid": "r", "incall": 1}}) == i.UpdateSession("s", "r", None, 1)
    assert i.parse_internal({"type": "removesession", "removesession": {
        "sessionid": "s", "roomid": "r", "userid": "u"}}) == i.RemoveSession("s", "r", "u")
    assert i.parse_internal({"type": "incall", "incall": {"incall": 7}}) == i.InCall(7)
    assert i.parse_internal({"type": "incall", "incall": {}}) == i.InCall(0)


def test_dialout_and_unknown_types() -> None:
    cmd = i.parse_internal({"type": "dialout", "dialout": {
        "type": "status", "roomid": "1", "status": {"callid": "c", "status": "ringing"}}})
    assert cmd == i.Dialout(DialoutMessage("status", "1", None, CallStatus("c", "ringing")))
    assert i.parse_internal({"type": "something"}) == i.OtherInternal("something")


@pytest.mark.parametrize("payload", [
    None, [], {}, {"type": ""}, {"type": 1},
    {"type": "addsession"}, {"type": "addsession", "addsession": "x"},
    {"type": "addsession", "addsession": {"roomid": "r"}},
    {"type": "addsession", "addsession": {"sessionid": "s"}},
    {"type": "addsession", "addsession": {"sessionid": "s", "roomid": "r", "flags": -1}},
    {"type": "addsession", "addsession": {"sessionid": "s", "roomid": "r", "flags": 2**32}},
    {"type": "addsession", "addsession": {"sessionid": "s", "roomid": "r", "incall": "1"}},
    {"type": "addsession", "addsession": {"sessionid": "s", "roomid": "r", "incall": True}},
    {"type": "addsession", "addsession": {"sessionid": "s", "roomid": "r", "options": []}},
    {"type": "addsession", "addsession": {"sessionid": "s", "roomid": "r", "userid": 5}},
    {"type": "updatesession", "updatesession": {"sessionid": "s"}},
    {"type": "updatesession", "updatesession": {"sessionid": "s", "roomid": "r",
                                                "flags": 1.5}},
    {"type": "removesession", "removesession": {"roomid": "r"}},
    {"type": "incall"}, {"type": "incall", "incall": {"incall": "1"}},
    {"type": "dialout"}, {"type": "dialout", "dialout": {"type": "status"}},
])
def test_invalid_internal(payload: Any) -> None:
    assert error_of(i.parse_internal, payload) == ("invalid_format", "Invalid data format.")


def test_virtual_key() -> None:
    assert i.virtual_key("owner", "sip-1") == "owner|sip-1"


# --- backend requests ------------------------------------------------------------------------


def test_add_session_request_with_actor() -> None:
    add = i.AddSession("sip-1", "room", "phone", None, 0, None, i.ActorOptions("a1", "phones"))
    assert i.add_session_request(add, "pub-v", 9) == {"type": "room", "room": {
        "version": "1.0", "roomid": "room", "userid": "phone", "sessionid": "pub-v",
        "actorid": "a1", "actortype": "phones", "incall": 9}}
    assert "incall" not in i.add_session_request(add, "pub-v", 0)["room"]


def test_add_session_request_without_actor() -> None:
    add = i.AddSession("sip-1", "room", "u", {"type": "phone"}, options=i.ActorOptions("a1"))
    assert i.add_session_request(add, "pub-v", 9) == {"type": "session", "session": {
        "version": "1.0", "roomid": "room", "action": "add", "sessionid": "pub-v",
        "userid": "u", "user": {"type": "phone"}}}
    assert i.add_session_request(i.AddSession("s", "room"), "pub-v", 9) == {
        "type": "session", "session": {"version": "1.0", "roomid": "room", "action": "add",
                                       "sessionid": "pub-v"}}


def test_remove_session_requests() -> None:
    assert i.remove_session_request("room", "pub-v", "u", None,
                                    i.ActorOptions("a1", "phones")) == {
        "type": "room", "room": {"version": "1.0", "roomid": "room", "action": "leave",
                                 "userid": "u", "sessionid": "pub-v", "actorid": "a1",
                                 "actortype": "phones"}}
    assert i.remove_session_request("room", "pub-v", "u", {"x": 1}, None) == {
        "type": "session", "session": {"version": "1.0", "roomid": "room",
                                       "action": "remove", "sessionid": "pub-v",
                                       "userid": "u", "user": {"x": 1}}}
    assert i.add_failed().code == "add_failed"
    assert i.remove_failed().message == "Could not remove virtual session from backend."


# --- how they appear --------------------------------------------------------------------------


def test_virtual_join_entry() -> None:
    assert i.virtual_join_entry("pub-v", "") == {"sessionid": "pub-v", "userid": ""}
    user = {"type": "phone", "callid": "c", "number": "+49"}
    assert i.virtual_join_entry("pub-v", "u", user) == {
        "sessionid": "pub-v", "userid": "u", "user": user}


def test_internal_entry_appended_to_empty_users() -> None:
    """hub_transient_data_test: an internal client joining -> one entry, inCall 3."""
    users = i.add_internal_sessions([], [i.InternalEntry("pub-i", 3)], [], 1700000000.7)
    assert users == [{"inCall": 3, "sessionId": "pub-i", "lastPing": 1700000000,
                      "internal": True}]


def test_add_internal_sessions() -> None:
    talk_users = [
        {"sessionId": "pub-a", "userId": "alice", "inCall": 1},
        {"sessionId": "pub-g", "inCall": 1},  # guest that sent a user id with its join
        {"sessionId": "pub-v1", "inCall": 0, "userId": ""},  # Talk lists a virtual session
        {"sessionId": "pub-n", "userId": None},  # null user id is kept as is
        {"inCall": 1},
    ]
    out = i.add_internal_sessions(
        talk_users,
        [i.InternalEntry("pub-i", 0, ("internal-incall", "start-dialout"))],
        [i.VirtualEntry("pub-v1", 9), i.VirtualEntry("pub-v2", 1)],
        100.0,
        {"pub-g": "guest-user"},
    )
    assert out == [
        {"sessionId": "pub-a", "userId": "alice", "inCall": 1},
        {"sessionId": "pub-g", "inCall": 1, "userId": "guest-user"},
        {"sessionId": "pub-v1", "inCall": 9, "userId": "", "virtual": True},
        {"sessionId": "pub-n", "userId": None},
        {"inCall": 1},
        {"inCall": 0, "sessionId": "pub-i", "lastPing": 100, "internal": True,
         "features": ["internal-incall", "start-dialout"]},
        {"inCall": 1, "sessionId": "pub-v2", "lastPing": 100, "virtual": True},
    ]
    assert talk_users[2] == {"sessionId": "pub-v1", "inCall": 0, "userId": ""}


def test_flags_event_and_duplicates() -> None:
    assert i.flags_event("room", "pub-v", 2) == {"type": "event", "event": {
        "target": "participants", "type": "flags",
        "flags": {"roomid": "room", "sessionid": "pub-v", "flags": 2}}}
    seen = i.SeenFlags()
    assert seen.should_send("pub-v", 1)
    assert not seen.should_send("pub-v", 1)
    assert seen.should_send("pub-v", 4)
    assert seen.should_send("pub-w", 4)
    seen.forget("pub-v")
    assert seen.should_send("pub-v", 4)


def test_readdress_to_owner() -> None:
    msg = {"type": "message", "message": {
        "sender": {"type": "session", "sessionid": "pub-a", "userid": "alice"},
        "recipient": {"type": "session", "sessionid": "pub-v"},
        "data": {"type": "offer"}}}
    assert i.readdress_to_owner(msg, "pub-v", "sip-1", "phone") == {
        "type": "message", "message": {
            "sender": {"type": "session", "sessionid": "pub-a", "userid": "alice"},
            "recipient": {"type": "session", "sessionid": "sip-1", "userid": "phone"},
            "data": {"type": "offer"}}}
    control = {"type": "control", "control": {
        "sender": {"type": "session", "sessionid": "pub-a"},
        "recipient": {"type": "session", "sessionid": "pub-v"}, "data": {"action": "mute"}}}
    got = i.readdress_to_owner(control, "pub-v", "sip-1")
    assert got is not None
    assert got["control"]["recipient"] == {"type": "session", "sessionid": "sip-1"}
    assert msg["message"]["recipient"] == {"type": "session", "sessionid": "pub-v"}


@pytest.mark.parametrize("msg", [
    {"type": "message", "message": {"recipient": {"type": "session", "sessionid": "other"}}},
    {"type": "message", "message": {"recipient": {"type": "room"}}},
    {"type": "message", "message": {"data": {}}},
    {"type": "event", "event": {"target": "room", "type": "join"}},
])
def test_readdress_to_owner_ignores_the_rest(msg: dict[str, Any]) -> None:
    assert i.readdress_to_owner(msg, "pub-v", "sip-1") is None


def test_hangup_and_room_deleted() -> None:
    assert i.hangup_control("sip-1", "phone") == {"type": "control", "control": {
        "sender": None, "recipient": {"type": "session", "sessionid": "sip-1",
                                      "userid": "phone"},
        "data": {"type": "hangup", "hangup": {"reason": "disinvited"}}}}
    assert i.room_deleted_event() == {"type": "event", "event": {
        "target": "room", "type": "delete"}}
