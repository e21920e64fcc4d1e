"""Dial-out (talk-features.md §5.4; upstream backend_server_test.go TestBackendServer_Dialout*,
hub_test.go TestDialoutStatus)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.signaling import dialout as d
from relay.signaling.protocol import SignalingError
from relay.signaling.transient import TransientStore

NC = "https://cloud.example.com/"


def dialout_error(payload: Any, room: str = "12345") -> d.DialoutError:
    with pytest.raises(d.DialoutError) as exc:
        d.validate_request(room, payload)
    return exc.value


# --- the backend request --------------------------------------------------------------------


def test_valid_request() -> None:
    opts = {"attendeeId": 3, "actorType": "phones", "actorId": "p1", "caller": "+4930123"}
    assert d.validate_request("12345", {"number": "+1234567890", "options": opts}) == (
        d.DialoutRequest("12345", "+1234567890", opts))


@pytest.mark.parametrize(("payload", "code", "message"), [
    ({}, "number_missing", "No number provided"),
    ({"number": ""}, "number_missing", "No number provided"),
    ({"number": None}, "number_missing", "No number provided"),
    ({"number": "1234567890"}, "invalid_number", "Expected E.164 number."),
    ({"number": "+1"}, "invalid_number", "Expected E.164 number."),
    ({"number": "+12 34"}, "invalid_number", "Expected E.164 number."),
    ({"number": "+1234\n"}, "invalid_number", "Expected E.164 number."),
    ({"number": "+١٢٣٤"}, "invalid_number", "Expected E.164 number."),  # non-ASCII digits
])
def test_invalid_number(payload: Any, code: str, message: str) -> None:
    err = dialout_error(payload)
    assert err.status == 400
    assert err.response() == d.DialoutResponse(400, {"type": "dialout", "dialout": {
        "error": {"code": code, "message": message}}})


@pytest.mark.parametrize("room", ["abc", "12a", "", "12 3", "١٢"])
def test_room_id_must_be_numeric(room: str) -> None:
    err = dialout_error({"number": "+1234567890"}, room)
    assert err.response() == d.DialoutResponse(400, {"type": "dialout", "dialout": {
        "error": {"code": "invalid_roomid", "message": "The room id must be numeric."}}})


def test_number_is_checked_before_the_room() -> None:
    assert dialout_error({"number": "x"}, "abc").error.code == "invalid_number"


@pytest.mark.parametrize("payload", [None, "x", {"number": 123}])
def test_unreadable_request(payload: Any) -> None:
    with pytest.raises(d.UnreadableRequest):
        d.validate_request("1", payload)


def test_responses() -> None:
    assert d.success_response("call-123") == d.DialoutResponse(
        200, {"type": "dialout", "dialout": {"callid": "call-123"}})
    assert d.all_failed_response([]) == d.DialoutResponse(404, {"type": "dialout", "dialout": {
        "error": {"code": "no_client_available",
                  "message": "No available client found to trigger dialout."}}})
    first = SignalingError("error-code", "error-message", {"x": 1})
    assert d.all_failed_response([first, d.timeout_error()]) == d.DialoutResponse(
        502, {"type": "dialout", "dialout": {"error": {
            "code": "error-code", "message": "error-message", "details": {"x": 1}}}})


def test_candidate_failure_errors() -> None:
    assert (d.timeout_error().code, d.timeout_error().message) == (
        "timeout", "Timeout while waiting for dialout to start.")
    assert d.notify_failed_error().code == d.no_response_error().code == "error_notify"


# --- the request to a candidate -----------------------------------------------------------


@pytest.mark.parametrize(("header", "urls", "expected"), [
    ("https://cloud.example.com", (NC,), NC),
    ("https://cloud.example.com/sub/", (NC,), "https://cloud.example.com/sub/"),
    ("https://other.example.com/", (NC, "https://second.example.com/"), NC),
    ("", (NC,), NC),
    ("https://any.example.com", (), "https://any.example.com/"),
    ("", (), ""),
])
def test_backend_url(header: str, urls: tuple[str, ...], expected: str) -> None:
    assert d.backend_url(header, urls) == expected


def test_internal_request_shape() -> None:
    req = d.DialoutRequest("12345", "+1234567890", {"attendeeId": 1})
    msg = d.internal_request(req, NC, "a" * 32)
    assert msg == {"id": "a" * 32, "type": "internal", "internal": {"type": "dialout", "dialout": {
        "roomid": "12345", "backend": NC,
        "request": {"number": "+1234567890", "options": {"attendeeId": 1}}}}}


def test_internal_request_without_options_and_fresh_ids() -> None:
    req = d.DialoutRequest("1", "+1234567890")
    a, b = d.internal_request(req, NC), d.internal_request(req, NC)
    assert a["internal"]["dialout"]["request"] == {"number": "+1234567890"}
    assert len(a["id"]) == 32 and a["id"].isalnum()
    assert a["id"] != b["id"]


# --- messages from the bridge -------------------------------------------------------------


def status_msg(status: str, **extra: Any) -> dict[str, Any]:
    return {"type": "status", "roomid": "12345",
            "status": {"callid": "call-123", "status": status, **extra}}


def test_accepted_reply() -> None:
    msg = d.parse_dialout(status_msg("accepted"))
    assert d.answer_callid(msg) == "call-123"
    assert not d.consumes_reply(msg)


def test_other_status_reply() -> None:
    with pytest.raises(SignalingError) as exc:
        d.answer_callid(d.parse_dialout(status_msg("ringing")))
    assert exc.value.code == "unsupported_status"
    assert exc.value.message.startswith("Unsupported dialout status received: ")


def test_error_reply() -> None:
    msg = d.parse_dialout({"type": "error", "error": {
        "code": "error-code", "message": "error-message", "details": [1]}})
    assert d.consumes_reply(msg)
    with pytest.raises(SignalingError) as exc:
        d.answer_callid(msg)
    assert (exc.value.code, exc.value.message, exc.value.details) == (
        "error-code", "error-message", [1])


def test_other_type_reply() -> None:
    with pytest.raises(SignalingError) as exc:
        d.answer_callid(d.parse_dialout({"type": "progress", "roomid": "1"}))
    assert exc.value.code == "unsupported_type"


@pytest.mark.parametrize("obj", [
    None, {}, {"type": ""}, {"type": "status"}, {"type": "error"},
    {"type": "status", "status": "accepted"}, {"type": "error", "error": "x"},
    {"type": "status", "status": {"callid": 1, "status": "accepted"}},
    {"type": "status", "status": {"callid": "c", "status": "accepted", "code": 1.5}},
    {"type": 3},
])
def test_invalid_dialout_message(obj: Any) -> None:
    with pytest.raises(SignalingError) as exc:
        d.parse_dialout(obj)
    assert (exc.value.code, exc.value.message) == ("invalid_format", "Invalid data format.")


def test_status_updates_become_transient_writes() -> None:
    w = d.status_update(d.parse_dialout(status_msg("ringing", extra="dropped")))
    assert w == d.TransientWrite("12345", "callstatus_call-123",
                                 {"callid": "call-123", "status": "ringing"}, 0)
    w = d.status_update(d.parse_dialout(status_msg("cleared", cause="cleared-call")))
    assert w == d.TransientWrite(
        "12345", "callstatus_call-123",
        {"callid": "call-123", "status": "cleared", "cause": "cleared-call"}, 5_000_000_000)
    w = d.status_update(d.parse_dialout(status_msg("rejected", code=486, message="Busy")))
    assert w is not None and w.ttl_ns == 5_000_000_000
    assert w.value == {"callid": "call-123", "status": "rejected", "code": 486,
                       "message": "Busy"}
    assert d.status_update(d.parse_dialout({"type": "error", "error": {"code": "c"}})) is None


def test_upstream_dialout_status_flow() -> None:
    """TestDialoutStatus: accepted -> ringing -> cleared, then removed after the TTL."""
    store = TransientStore()
    key = "callstatus_call-123"
    out: list[dict[str, Any]] = []
    for now, status in ((0.0, status_msg("accepted")), (1.0, status_msg("ringing")),
                        (2.0, status_msg("cleared", cause="cleared-call"))):
        w = d.status_update(d.parse_dialout(status))
        assert w is not None
        out += store.set(w.key, w.value, w.ttl_ns, now)
    assert out == [
        {"type": "transient", "transient": {"type": "set", "key": key, "value": {
            "callid": "call-123", "status": "accepted"}}},
        {"type": "transient", "transient": {"type": "set", "key": key, "oldvalue": {
            "callid": "call-123", "status": "accepted"}, "value": {
            "callid": "call-123", "status": "ringing"}}},
        {"type": "transient", "transient": {"type": "set", "key": key, "oldvalue": {
            "callid": "call-123", "status": "ringing"}, "value": {
            "callid": "call-123", "status": "cleared", "cause": "cleared-call"}}},
    ]
    assert store.next_deadline() == pytest.approx(7.0)
    assert store.expire(7.0) == [{"type": "transient", "transient": {
        "type": "remove", "key": key,
        "oldvalue": {"callid": "call-123", "status": "cleared", "cause": "cleared-call"}}}]


def test_room_dialout_message_drops_the_room() -> None:
    msg = d.parse_dialout({"type": "error", "roomid": "12345",
                           "error": {"code": "c", "message": "m"}})
    assert d.room_dialout_message(msg) == {"type": "dialout", "dialout": {
        "type": "error", "error": {"code": "c", "message": "m"}}}
