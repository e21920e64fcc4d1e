"""The federation link's sans-IO core: request parsing, id/actor rewriting, state machine."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.signaling import federation as fed
from relay.signaling.protocol import SignalingError

OWN_L = "own-local"
OWN_R = "own-remote"
OTHER = "other-remote"
LOCAL_NC = "https://local.example/"  # the local client's hello auth.url, normalised
REMOTE_NC = "https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend"


def room_obj(**fed_fields: Any) -> dict[str, Any]:
    federation = {
        "signaling": "https://sig.remote.example/standalone-signaling",
        "url": REMOTE_NC,
        "roomid": "remote-room",
        "token": "jwt",
    }
    federation.update(fed_fields)
    return {"roomid": "local-room", "sessionid": "talk-sid", "federation": federation}


def mapper(local_room: str = "local-room", remote_room: str = "remote-room") -> fed.IdMapper:
    return fed.IdMapper(OWN_L, LOCAL_NC, REMOTE_NC, local_room, remote_room, OWN_R)


# --- request ---------------------------------------------------------------------------------


def test_request_is_parsed_and_normalised() -> None:
    req = fed.parse_federation_room(room_obj())
    assert req.signaling_url == "https://sig.remote.example/standalone-signaling/"
    assert req.websocket_url == "wss://sig.remote.example/standalone-signaling/spreed"
    assert req.nextcloud_url == REMOTE_NC
    assert (req.local_room_id, req.remote_room_id) == ("local-room", "remote-room")
    assert (req.room_session_id, req.token) == ("talk-sid", "jwt")
    plain = fed.parse_federation_room(room_obj(signaling="http://127.0.0.1:8080/", roomid=None))
    assert plain.websocket_url == "ws://127.0.0.1:8080/spreed"
    assert plain.remote_room_id == "local-room"  # defaults to the local room id


def test_reuse_needs_the_same_remote_nextcloud_and_server() -> None:
    a = fed.parse_federation_room(room_obj())
    assert a.can_reuse(fed.parse_federation_room(room_obj(roomid="another", token="t2")))
    assert not a.can_reuse(fed.parse_federation_room(room_obj(url="https://third.example/")))
    assert not a.can_reuse(fed.parse_federation_room(room_obj(signaling="https://x.example/")))


@pytest.mark.parametrize(
    ("room", "field"),
    [
        ({"roomid": "r", "federation": "x"}, "room.federation"),
        ({"roomid": "", "federation": room_obj()["federation"]}, "room.roomid"),
        (room_obj(signaling=""), "room.federation.signaling"),
        (room_obj(signaling=7), "room.federation.signaling"),
        (room_obj(signaling="ftp://x.example/"), "room.federation.signaling"),
        (room_obj(signaling="https://"), "room.federation.signaling"),
        (room_obj(signaling="https://x.example:99999/"), "room.federation.signaling"),
        (room_obj(url=None), "room.federation.url"),
        (room_obj(url="not a url"), "room.federation.url"),
        (room_obj(token=""), "room.federation.token"),
        (room_obj(token=["x"]), "room.federation.token"),
        (room_obj(roomid=5), "room.federation.roomid"),
    ],
)
def test_bad_request_is_invalid_format_naming_the_field(room: Any, field: str) -> None:
    with pytest.raises(SignalingError) as exc:
        fed.parse_federation_room(room)
    assert exc.value.code == "invalid_format"
    assert field in exc.value.message


def test_cloud_urls() -> None:
    assert fed.cloud_url(REMOTE_NC) == "remote.example"
    assert fed.cloud_url("http://nc.example/sub/") == "nc.example/sub"
    assert fed.cloud_url_without_path(REMOTE_NC) == "https://remote.example"
    assert fed.cloud_url_without_path("https://nc.example/") == "https://nc.example"


# --- remote → local rewriting ----------------------------------------------------------------


def test_participants_update_maps_actors_and_the_first_own_entry() -> None:
    users = [
        {"sessionId": OTHER, "inCall": 1, "actorId": "bob", "actorType": "users"},
        {"sessionId": OWN_R, "inCall": 1, "actorId": "alice@local.example",
         "actorType": "federated_users"},
        {"sessionid": OWN_R, "actorId": "carol@third.example", "actorType": "federated_users"},
    ]  # fmt: skip
    msg = {
        "type": "event",
        "event": {
            "target": "participants",
            "type": "update",
            "update": {"roomid": "remote-room", "users": users, "changed": [dict(users[1])]},
        },
    }
    out = mapper().from_remote(msg)["event"]["update"]
    assert out["roomid"] == "local-room"
    assert out["users"] == [
        {"sessionId": OTHER, "inCall": 1, "actorId": "bob@remote.example",
         "actorType": "federated_users"},
        {"sessionId": OWN_L, "inCall": 1, "actorId": "alice", "actorType": "users"},
        # only the first entry with our id is ours; other federated users stay as they are
        {"sessionid": OWN_R, "actorId": "carol@third.example", "actorType": "federated_users"},
    ]  # fmt: skip
    assert out["changed"] == [
        {"sessionId": OWN_L, "inCall": 1, "actorId": "alice", "actorType": "users"}
    ]


def test_flags_join_leave_and_roomlist_events() -> None:
    m = mapper()
    flags = m.from_remote(
        {"type": "event", "event": {"target": "participants", "type": "flags",
         "flags": {"roomid": "remote-room", "sessionid": OWN_R, "flags": 1}}}
    )  # fmt: skip
    assert flags["event"]["flags"] == {"roomid": "local-room", "sessionid": OWN_L, "flags": 1}
    join = m.from_remote(
        {"type": "event", "event": {"target": "room", "type": "join",
         "join": [{"sessionid": OTHER, "userid": "o"}, {"sessionid": OWN_R, "userid": "me"}]}}
    )  # fmt: skip
    assert [e["sessionid"] for e in join["event"]["join"]] == [OTHER, OWN_L]
    leave = m.from_remote(
        {"type": "event", "event": {"target": "room", "type": "leave", "leave": [OTHER, OWN_R]}}
    )
    assert leave["event"]["leave"] == [OTHER, OWN_L]
    for etype in ("invite", "disinvite", "update"):
        ev = m.from_remote(
            {"type": "event", "event": {"target": "roomlist", "type": etype,
             etype: {"roomid": "remote-room", "properties": {}}}}
        )  # fmt: skip
        assert ev["event"][etype]["roomid"] == "local-room"
    other_room = m.from_remote(
        {"type": "event", "event": {"target": "roomlist", "type": "invite",
         "invite": {"roomid": "unrelated"}}}
    )  # fmt: skip
    assert other_room["event"]["invite"]["roomid"] == "unrelated"
    # switchto names a room of the remote Nextcloud: kept
    switch = m.from_remote(
        {"type": "event", "event": {"target": "room", "type": "switchto",
         "switchto": {"roomid": "remote-room"}}}
    )  # fmt: skip
    assert switch["event"]["switchto"]["roomid"] == "remote-room"


def test_chat_comment_actors_mentions_and_token() -> None:
    comment = {
        "actorType": "users",
        "actorId": "bob",
        "lastEditActorType": "federated_users",
        "lastEditActorId": "alice@local.example",
        "token": "remote-room",
        "messageParameters": {
            "mention-user1": {"type": "user", "id": "alice", "server": "https://local.example"},
            "mention-user2": {"type": "user", "id": "bob"},
            "mention-user3": {"type": "user", "id": "x", "mention-id": "x", "server": "s"},
            "mention-call1": {"type": "call", "id": "remote-room"},
            "file": {"type": "file", "id": "1"},
        },
        "parent": {"actorType": "users", "actorId": "carol", "token": "remote-room"},
    }
    msg = {
        "type": "event",
        "event": {
            "target": "room",
            "type": "message",
            "message": {
                "roomid": "remote-room",
                "data": {"type": "chat", "chat": {"comment": comment}},
            },
        },
    }
    out = mapper().from_remote(msg)["event"]["message"]
    assert out["roomid"] == "local-room"
    c = out["data"]["chat"]["comment"]
    assert (c["actorType"], c["actorId"]) == ("federated_users", "bob@remote.example")
    assert (c["lastEditActorType"], c["lastEditActorId"]) == ("users", "alice")
    assert c["token"] == "local-room"
    params = c["messageParameters"]
    assert params["mention-user1"] == {"type": "user", "id": "alice"}
    assert params["mention-user2"] == {
        "type": "user", "id": "bob", "mention-id": "bob", "server": "https://remote.example"
    }  # fmt: skip
    assert params["mention-user3"] == {"type": "user", "id": "x", "mention-id": "x", "server": "s"}
    assert params["mention-call1"] == {"type": "call", "id": "local-room"}
    assert params["file"] == {"type": "file", "id": "1"}
    assert c["parent"] == {
        "actorType": "federated_users", "actorId": "carol@remote.example", "token": "local-room"
    }  # fmt: skip


def test_messages_controls_transient_errors_and_room_answers() -> None:
    m = mapper()
    msg = m.from_remote(
        {"type": "message", "message": {
            "sender": {"type": "session", "sessionid": OTHER, "userid": "o"},
            "recipient": {"type": "session", "sessionid": OWN_R},
            "data": {"type": "answer", "from": OTHER, "to": OWN_R, "sid": "1", "extra": True}}}
    )  # fmt: skip
    assert msg["message"]["recipient"] == {"type": "session", "sessionid": OWN_L}
    assert msg["message"]["data"] == {
        "type": "answer", "from": OTHER, "to": OWN_L, "sid": "1", "extra": True
    }  # fmt: skip
    echo = m.from_remote(
        {"type": "control", "control": {
            "sender": {"type": "session", "sessionid": OWN_R},
            "data": {"action": "forceMute", "peerId": OWN_R}}}
    )  # fmt: skip
    assert echo["control"] == {
        "sender": {"type": "session", "sessionid": OWN_L},
        "data": {"action": "forceMute", "peerId": OWN_L},
    }
    transient = m.from_remote(
        {"type": "transient", "transient": {"type": "set", "key": f"sd:{OWN_R}", "value": 1}}
    )
    assert transient["transient"]["key"] == f"sd:{OWN_L}"
    err = m.from_remote(
        {"id": "j", "type": "error", "error": {"code": "already_joined", "message": "m",
         "details": {"room": {"roomid": "remote-room", "properties": {}}}}}
    )  # fmt: skip
    assert err["error"]["details"]["room"]["roomid"] == "local-room"
    room = m.from_remote({"id": "j", "type": "room", "room": {"roomid": "remote-room"}})
    assert room == {"id": "j", "type": "room", "room": {"roomid": "local-room"}}


def test_local_messages_to_the_remote() -> None:
    m = mapper()
    msg = m.to_remote(
        {"type": "message", "message": {"recipient": {"type": "session", "sessionid": OWN_L},
         "data": {}}}
    )  # fmt: skip
    assert msg["message"]["recipient"]["sessionid"] == OWN_R
    transient = m.to_remote(
        {"type": "transient", "transient": {"type": "remove", "key": f"sd:{OWN_L}"}}
    )
    assert transient["transient"]["key"] == f"sd:{OWN_R}"
    # control and other ids pass verbatim, as upstream forwards them
    control = {"type": "control", "control": {"recipient": {"type": "session", "sessionid": OWN_L}}}
    assert m.to_remote(json.loads(json.dumps(control))) == control


# --- the state machine -----------------------------------------------------------------------


def core(**kw: Any) -> fed.LinkCore:
    ids = (f"h{i}" for i in itertools.count(1))
    return fed.LinkCore(
        fed.parse_federation_room(room_obj()),
        local_session_id=OWN_L,
        local_backend_url=LOCAL_NC,
        features=kw.pop("features", ("chat-relay",)),
        join_id=kw.pop("join_id", "join-1"),
        new_id=lambda: next(ids),
    )


def frame(msg: dict[str, Any]) -> str:
    return json.dumps(msg)


WELCOME = frame({"type": "welcome", "welcome": {"version": "x", "features": ["federation"]}})


def hello_ok(hid: str, sid: str = OWN_R, resume: str = "res-1") -> str:
    return frame({"id": hid, "type": "hello", "hello": {"sessionid": sid, "resumeid": resume}})


def ready_core() -> fed.LinkCore:
    c = core()
    c.connection_made(["federation"])
    c.receive(WELCOME)
    c.receive(hello_ok("h1"))
    return c


def test_handshake_sends_the_federation_hello_then_the_join() -> None:
    c = core()
    assert c.connection_made(["welcome", "federation"]) == []
    assert c.receive(WELCOME) == [
        fed.Send({"id": "h1", "type": "hello", "hello": {
            "version": "2.0", "features": ["chat-relay"],
            "auth": {"type": "federation", "url": REMOTE_NC, "params": {"token": "jwt"}}}})
    ]  # fmt: skip
    assert c.receive(hello_ok("h1")) == [
        fed.Send({"id": "join-1", "type": "room",
                  "room": {"roomid": "remote-room", "sessionid": "talk-sid"}})
    ]  # fmt: skip
    assert c.state is fed.LinkState.READY
    assert c.remote_session_id == OWN_R


def test_unexpected_hello_answers_are_retried_then_fail() -> None:
    c = core()
    c.connection_made(["federation"])
    c.receive(WELCOME)
    effects = c.receive(frame({"id": "other", "type": "hello", "hello": {"sessionid": "x"}}))
    assert [type(e) for e in effects] == [fed.Send]
    assert isinstance(effects[0], fed.Send) and effects[0].message["id"] == "h2"
    for hid in ("h2", "h3"):
        c.receive(frame({"id": hid, "type": "room", "room": {}}))
    out = c.receive(frame({"id": "h4", "type": "bye"}))
    assert out[-1] == fed.Finish()
    assert isinstance(out[0], fed.Deliver)
    assert out[0].message["error"]["code"] == "federation_error"
    assert out[0].message["id"] == "join-1"


def test_lost_connection_interrupts_and_resume_flushes_mapped_pending_messages() -> None:
    c = ready_core()
    assert c.connection_lost() == [fed.Deliver(fed.interrupted_event()), fed.Reconnect()]
    c.forward({"type": "message", "message": {
        "recipient": {"type": "session", "sessionid": OWN_L}, "data": 1}})  # fmt: skip
    c.connection_made(["federation"])
    resume = c.receive(WELCOME)
    assert resume == [fed.Send({"id": "h2", "type": "hello", "hello": {
        "version": "2.0", "features": ["chat-relay"], "resumeid": "res-1"}})]  # fmt: skip
    out = c.receive(hello_ok("h2"))
    assert out == [
        fed.Deliver(fed.resumed_event(True)),
        fed.Send({"type": "message", "message": {
            "recipient": {"type": "session", "sessionid": OWN_R}, "data": 1}}),
    ]  # fmt: skip


def test_expired_remote_session_gets_a_new_hello_and_a_rejoin_without_id() -> None:
    c = ready_core()
    c.receive(frame({"id": "join-1", "type": "room", "room": {"roomid": "remote-room"}}))
    c.connection_lost()
    c.forward({"type": "control", "control": {}})  # dropped with the old remote session
    c.connection_made(["federation"])
    c.receive(WELCOME)
    fresh = c.receive(frame({"id": "h2", "type": "error", "error": {"code": "no_such_session"}}))
    assert isinstance(fresh[0], fed.Send)
    assert "auth" in fresh[0].message["hello"]
    out = c.receive(hello_ok(fresh[0].message["id"], sid="own-remote-2", resume="res-2"))
    assert out == [
        fed.Deliver(fed.resumed_event(False)),
        fed.Send({"type": "room", "room": {"roomid": "remote-room", "sessionid": "talk-sid"}}),
    ]
    assert c.remote_session_id == "own-remote-2"


def test_hello_error_goes_to_the_client_with_its_join_id() -> None:
    c = core()
    c.connection_made(["federation"])
    c.receive(WELCOME)
    out = c.receive(frame({"id": "h1", "type": "error", "error": {
        "code": "token_expired", "message": "The token is expired."}}))  # fmt: skip
    assert out == [
        fed.Deliver({"id": "join-1", "type": "error", "error": {
            "code": "token_expired", "message": "The token is expired."}}),
        fed.Finish(),
    ]  # fmt: skip
    with pytest.raises(SignalingError):
        c.forward({"type": "message"})


def test_failures_before_the_first_session_answer_the_join() -> None:
    c = core()
    out = c.connection_failed("network_error", "refused")
    assert out == [
        fed.Deliver({"id": "join-1", "type": "error", "error": {
            "code": "federation_error", "message": "Failed to create federation client.",
            "details": {"code": "network_error", "message": "refused"}}}),
        fed.Finish(),
    ]  # fmt: skip
    c2 = core()
    assert c2.connection_made(["welcome"])[0] == fed.Deliver(
        {"id": "join-1", "type": "error", "error": {
            "code": "federation_unsupported",
            "message": "The target server does not support federation."}}
    )  # fmt: skip
    c3 = core()
    c3.connection_made(["federation"])
    c3.receive(WELCOME)
    assert c3.handshake_timed_out()[-1] == fed.Finish()
    # once a remote session existed, the same failures mean: try again
    c4 = ready_core()
    c4.connection_lost()
    assert c4.connection_failed("network_error", "refused") == [fed.Reconnect()]
    assert c4.connection_made(["welcome"]) == [fed.Reconnect()]


def test_pending_queue_is_bounded() -> None:
    c = core()
    for _ in range(fed.MAX_PENDING):
        assert c.forward({"type": "message"}) == []
    with pytest.raises(SignalingError) as exc:
        c.forward({"type": "message"})
    assert exc.value.code == "federation_error"


def test_change_room_rejoins_and_maps_with_the_new_ids_after_the_answer() -> None:
    c = ready_core()
    new = fed.parse_federation_room({**room_obj(roomid="remote-2"), "roomid": "local-2"})
    assert c.change_room(new, "join-2") == [
        fed.Send({"id": "join-2", "type": "room",
                  "room": {"roomid": "remote-2", "sessionid": "talk-sid"}})
    ]  # fmt: skip
    out = c.receive(frame({"id": "join-2", "type": "room", "room": {"roomid": "remote-2"}}))
    assert out == [fed.Deliver({"id": "join-2", "type": "room", "room": {"roomid": "local-2"}})]
    with pytest.raises(ValueError):
        c.change_room(fed.parse_federation_room(room_obj(url="https://x.example/")), "j")


def test_leave_closes_after_the_remote_answer() -> None:
    c = ready_core()
    leave = {"id": "l1", "type": "room", "room": {"roomid": ""}}
    assert c.leave(leave) == [fed.Send(leave)]
    out = c.receive(frame({"id": "l1", "type": "room", "room": {"roomid": ""}}))
    assert out == [fed.Deliver({"id": "l1", "type": "room", "room": {"roomid": ""}}), fed.Finish()]
    # an error answer to the leave also ends the link
    c1 = ready_core()
    c1.leave(leave)
    err = {"id": "l1", "type": "error", "error": {"code": "not_in_room", "message": "m"}}
    assert c1.receive(frame(err)) == [fed.Deliver(err), fed.Finish()]
    # without a remote session the link answers the leave itself
    c2 = core()
    assert c2.leave(leave) == [fed.Deliver({"id": "l1", "type": "room", "room": {"roomid": ""}}),
                               fed.Finish()]  # fmt: skip
    # a lost connection during the leave completes it
    c3 = ready_core()
    c3.leave(leave)
    assert c3.connection_lost()[-1] == fed.Finish()
    assert c3.close() == []


def test_backoff_doubles_up_to_the_maximum_and_resets() -> None:
    b = fed.Backoff()
    delays = [b.schedule(100.0) - 100.0 for _ in range(10)]
    expected = [min(fed.INITIAL_RECONNECT_DELAY * 2**i, fed.MAX_RECONNECT_DELAY) for i in range(10)]
    assert delays == pytest.approx(expected)
    b.reset()
    assert b.schedule(5.0) == pytest.approx(5.0 + fed.INITIAL_RECONNECT_DELAY)


def test_header_features() -> None:
    headers = [(b"x-spreed-signaling-features", b"welcome, federation,hello-v2"), (b"server", b"x")]
    assert fed.header_features(headers) == ["welcome", "federation", "hello-v2"]
    assert fed.header_features([]) == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from([OWN_R, "remote-room", "session", "users", "federated_users", "chat"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(["type", "event", "target", "update", "users", "changed", "join",
                         "leave", "message", "data", "chat", "comment", "parent", "roomid",
                         "sessionid", "sessionId", "actorId", "actorType", "recipient",
                         "sender", "messageParameters", "mention-a", "key", "transient",
                         "error", "code", "details", "room", "flags", "control", "id"]),
        inner, max_size=5),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_remote_frame_is_delivered_without_raising(value: Any) -> None:
    c = ready_core()
    for effect in c.receive(json.dumps(value)):
        assert isinstance(effect, fed.Deliver | fed.Finish)
        if isinstance(effect, fed.Deliver):
            assert isinstance(effect.message, dict)
