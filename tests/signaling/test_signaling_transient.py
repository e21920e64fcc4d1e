"""Room transient data (talk-features.md §7; upstream hub_transient_data_test.go)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.signaling.permissions import Permissions
from relay.signaling.protocol import SignalingError
from relay.signaling.transient import (
    TransientRequest,
    TransientStore,
    Writer,
    json_equal,
    not_in_room,
    parse_transient,
)

SECOND_NS = 1_000_000_000
ALLOWED = Permissions.of(["transient-data"])
DENIED = Permissions.of([])


def writer(public_id: str = "s1", perms: Permissions = ALLOWED, internal: bool = False) -> Writer:
    return Writer(public_id, perms, internal)


def code_of(fn: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(SignalingError) as exc:
        fn(*args)
    return exc.value.code, exc.value.message


# --- parsing ------------------------------------------------------------------------------


def test_parse_set_with_ttl() -> None:
    assert parse_transient({"type": "set", "key": "k", "value": {"a": [1]}, "ttl": 200}) == (
        TransientRequest("set", "k", {"a": [1]}, 200))


def test_parse_remove_and_absent_value() -> None:
    assert parse_transient({"type": "remove", "key": "k"}) == TransientRequest("remove", "k")
    assert parse_transient({"type": "set", "key": "k", "value": None}).value is None


def test_parse_unknown_type_is_accepted_for_the_store_to_answer() -> None:
    assert parse_transient({"type": "clear"}) == TransientRequest("clear")


@pytest.mark.parametrize("payload", [
    None, "set", [], {}, {"type": ""}, {"type": 1, "key": "k"},
    {"type": "set"}, {"type": "set", "key": ""}, {"type": "remove"},
    {"type": "set", "key": 5, "value": 1}, {"type": "set", "key": "k", "ttl": 1.5},
    {"type": "set", "key": "k", "ttl": True}, {"type": "set", "key": "k", "ttl": "1"},
    {"type": "set", "key": "k", "ttl": 2**63},
])
def test_parse_invalid(payload: Any) -> None:
    assert code_of(parse_transient, payload) == ("invalid_format", "Invalid data format.")


def test_not_in_room_is_upstreams_error() -> None:
    err = not_in_room()
    assert (err.code, err.message) == ("not_in_room", "No room joined yet.")


# --- checks ---------------------------------------------------------------------------------


def test_unknown_type_is_ignored_before_permission_checks() -> None:
    store = TransientStore()
    req = TransientRequest("clear", "k")
    assert code_of(store.handle, req, writer(perms=DENIED), 0.0) == (
        "ignored", "Unsupported message type.")


@pytest.mark.parametrize("kind", ["set", "remove"])
def test_without_transient_data_permission(kind: str) -> None:
    store = TransientStore()
    req = TransientRequest(kind, "foo", "bar")
    assert code_of(store.handle, req, writer(perms=DENIED), 0.0) == (
        "not_allowed", "Not allowed to update transient data.")
    # the permission check comes first, also for someone else's session key
    req = TransientRequest(kind, "sd:other", "bar")
    assert code_of(store.handle, req, writer(perms=DENIED), 0.0)[1] == (
        "Not allowed to update transient data.")


def test_permissions_never_set_allow_writing() -> None:
    store = TransientStore()
    assert store.set("foo", "bar", 0, 0.0, writer(perms=Permissions())) != []


@pytest.mark.parametrize("kind", ["set", "remove"])
def test_session_data_of_another_session(kind: str) -> None:
    store = TransientStore()
    store.set("sd:s2", "x", 0, 0.0)
    req = TransientRequest(kind, "sd:s2", "foo")
    assert code_of(store.handle, req, writer("s1"), 0.0) == (
        "not_allowed", "Not allowed to update this transient data entry.")
    assert store.get("sd:s2") == "x"


def test_own_session_data_and_internal_clients() -> None:
    store = TransientStore()
    assert store.handle(TransientRequest("set", "sd:s1", "foo"), writer("s1"), 0.0) == [
        {"type": "transient", "transient": {"type": "set", "key": "sd:s1", "value": "foo"}}]
    internal = writer("i1", perms=DENIED, internal=True)
    assert store.handle(TransientRequest("set", "sd:s3", "baz"), internal, 0.0) == [
        {"type": "transient", "transient": {"type": "set", "key": "sd:s3", "value": "baz"}}]
    assert store.handle(TransientRequest("remove", "sd:s1"), internal, 0.0) == [
        {"type": "transient", "transient": {"type": "remove", "key": "sd:s1",
                                            "oldvalue": "foo"}}]


# --- set / remove ---------------------------------------------------------------------------


def test_upstream_sequence() -> None:
    """The message flow of upstream's Test_TransientMessages (one node)."""
    store = TransientStore()
    w = writer()
    assert store.set("foo", "bar", 0, 0.0, w) == [
        {"type": "transient", "transient": {"type": "set", "key": "foo", "value": "bar"}}]
    assert store.set("foo", "bar", 0, 1.0, w) == []  # same value: nothing sent
    data = {"hello": "world"}
    assert store.set("foo", data, 0, 2.0, w) == [
        {"type": "transient", "transient": {"type": "set", "key": "foo", "oldvalue": "bar",
                                            "value": data}}]
    assert store.remove("foo", w) == [
        {"type": "transient", "transient": {"type": "remove", "key": "foo", "oldvalue": data}}]
    assert store.remove("foo", w) == []  # missing key: silent
    assert store.initial() is None


def test_falsy_old_value_is_still_sent() -> None:
    store = TransientStore()
    store.set("k", 0, 0, 0.0)
    assert store.set("k", False, 0, 0.0) == [
        {"type": "transient", "transient": {"type": "set", "key": "k", "oldvalue": 0,
                                            "value": False}}]


def test_null_value_removes() -> None:
    store = TransientStore()
    store.set("k", [1, 2], 0, 0.0)
    assert store.handle(TransientRequest("set", "k", None), writer(), 0.0) == [
        {"type": "transient", "transient": {"type": "remove", "key": "k", "oldvalue": [1, 2]}}]
    assert store.set("k", None, 0, 0.0) == []


def test_initial_snapshot() -> None:
    store = TransientStore()
    store.set("abc", {"hello": "world"}, 0, 0.0)
    store.set("sd:s2", "bar", 0, 0.0)
    assert store.initial() == {"type": "transient", "transient": {"type": "initial", "data": {
        "abc": {"hello": "world"}, "sd:s2": "bar"}}}


def test_session_left_removes_its_session_data() -> None:
    store = TransientStore()
    store.set("sd:s1", "foo", 0, 0.0)
    store.set("sd:s2", "bar", 0, 0.0)
    assert store.session_left("s1") == [
        {"type": "transient", "transient": {"type": "remove", "key": "sd:s1",
                                            "oldvalue": "foo"}}]
    assert store.session_left("s3") == []
    assert store.data == {"sd:s2": "bar"}


@pytest.mark.parametrize(("a", "b", "equal"), [
    (1, 1.0, True), (True, 1, False), (False, 0, False), (None, None, True),
    ({"a": [1, {"b": "c"}]}, {"a": [1.0, {"b": "c"}]}, True),
    ({"a": 1}, {"a": 1, "b": 2}, False), ([1, 2], [2, 1], False), ("1", 1, False),
    ({"a": True}, {"a": 1}, False), ([], {}, False),
])
def test_json_equal(a: Any, b: Any, equal: bool) -> None:
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


def test_equal_number_is_not_a_change() -> None:
    store = TransientStore()
    store.set("k", {"n": 1}, 0, 0.0)
    assert store.set("k", {"n": 1.0}, 0, 0.0) == []
    assert store.set("k", {"n": True}, 0, 0.0) != []


# --- TTL ----------------------------------------------------------------------------------


def test_ttl_expiry_sends_remove() -> None:
    store = TransientStore()
    data = {"hello": "world"}
    store.set("abc", data, 200_000_000, 10.0)
    assert store.next_deadline() == pytest.approx(10.2)
    assert store.expire(10.1) == []
    assert store.expire(10.2) == [
        {"type": "transient", "transient": {"type": "remove", "key": "abc", "oldvalue": data}}]
    assert store.next_deadline() is None
    assert "abc" not in store


def test_same_value_restarts_the_ttl() -> None:
    store = TransientStore()
    store.set("k", "v", 5 * SECOND_NS, 0.0)
    assert store.set("k", "v", 5 * SECOND_NS, 3.0) == []
    assert store.next_deadline() == pytest.approx(8.0)
    assert store.expire(5.0) == []
    assert len(store.expire(8.0)) == 1


def test_same_value_without_ttl_clears_it() -> None:
    store = TransientStore()
    store.set("k", "v", SECOND_NS, 0.0)
    store.set("k", "v", 0, 0.5)
    assert store.next_deadline() is None
    assert store.expire(100.0) == []
    assert store.get("k") == "v"


def test_new_value_without_ttl_cancels_the_old_timer() -> None:
    store = TransientStore()
    store.set("k", "v1", SECOND_NS, 0.0)
    store.set("k", "v2", 0, 0.5)
    assert store.expire(2.0) == []
    assert store.get("k") == "v2"


def test_new_value_with_ttl_expires_with_that_value() -> None:
    store = TransientStore()
    store.set("k", "v1", SECOND_NS, 0.0)
    store.set("k", "v2", 3 * SECOND_NS, 0.5)
    assert store.expire(1.0) == []
    assert store.expire(3.5) == [
        {"type": "transient", "transient": {"type": "remove", "key": "k", "oldvalue": "v2"}}]


def test_remove_cancels_the_timer() -> None:
    store = TransientStore()
    store.set("k", "v", SECOND_NS, 0.0)
    store.remove("k")
    assert store.next_deadline() is None
    store.set("k", "again", 0, 0.5)
    assert store.expire(2.0) == []
    assert store.get("k") == "again"


def test_negative_ttl_is_no_expiry() -> None:
    store = TransientStore()
    store.set("k", "v", -5, 0.0)
    assert store.next_deadline() is None


def test_expiry_in_deadline_order() -> None:
    store = TransientStore()
    store.set("late", 1, 3 * SECOND_NS, 0.0)
    store.set("early", 2, 1 * SECOND_NS, 0.0)
    store.set("never", 3, 0, 0.0)
    assert store.next_deadline() == pytest.approx(1.0)
    assert [m["transient"]["key"] for m in store.expire(10.0)] == ["early", "late"]
    assert store.data == {"never": 3}


# --- a listener that applies the events sees the store's data ------------------------------

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b"]),
    st.lists(st.integers(0, 2), max_size=2), st.dictionaries(st.sampled_from(["x", "y"]),
                                                             st.integers(0, 1), max_size=2),
)
_ops = st.lists(st.tuples(
    st.sampled_from(["set", "remove", "expire", "left"]),
    st.sampled_from(["k1", "k2", "sd:s1", "sd:s2"]),
    _values,
    st.sampled_from([0, -1, SECOND_NS // 2, 2 * SECOND_NS]),
    st.floats(0, 1.5),
), max_size=30)


def _apply(view: dict[str, Any], msg: dict[str, Any]) -> None:
    body = msg["transient"]
    if body["type"] == "set":
        assert ("oldvalue" in body) == (body["key"] in view)
        if "oldvalue" in body:
            assert json_equal(body["oldvalue"], view[body["key"]])
            assert not json_equal(body["oldvalue"], body["value"])
        view[body["key"]] = body["value"]
    elif body["type"] == "remove":
        assert json_equal(view.pop(body["key"]), body["oldvalue"])
    else:
        view.clear()
        view.update(body["data"])


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_listener_view_follows_the_store(ops: list[tuple[str, str, Any, int, float]]) -> None:
    store = TransientStore()
    view: dict[str, Any] = {}
    now = 0.0
    for kind, key, value, ttl, step in ops:
        now += step
        out: list[dict[str, Any]] = store.expire(now)
        if kind == "set":
            out += store.set(key, value, ttl, now)
        elif kind == "remove":
            out += store.remove(key)
        elif kind == "left":
            out += store.session_left(key.removeprefix("sd:"))
        for msg in out:
            _apply(view, msg)
        assert view == store.data
        deadline = store.next_deadline()
        assert deadline is None or deadline > now
    joiner: dict[str, Any] = {}
    initial = store.initial()
    if initial is not None:
        _apply(joiner, initial)
    assert joiner == store.data
