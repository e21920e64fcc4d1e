"""End to end: a FederationLink against a fake remote signaling server on 127.0.0.1."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trustme

from relay.signaling import federation as fed
from relay.signaling.federation_link import FederationLink
from tests.signaling.fake_remote import OTHER_SESSION, ROOM_PROPERTIES, FakeRemote

LOCAL_SESSION = "local-own-session"
LOCAL_BACKEND = "https://local.example/"
REMOTE_NC = "https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend"
LIMIT = 10  # seconds any one test may take


@attrs.define
class Local:
    """The local client's side: what the link delivered."""

    send: trio.MemorySendChannel[dict[str, Any]]
    recv: trio.MemoryReceiveChannel[dict[str, Any]]

    def deliver(self, msg: dict[str, Any]) -> None:
        self.send.send_nowait(msg)

    async def next(self) -> dict[str, Any]:
        return await self.recv.receive()

    async def until(self, pred: Any) -> dict[str, Any]:
        while True:
            msg = await self.recv.receive()
            if pred(msg):
                return msg


@pytest.fixture
async def remote(nursery: trio.Nursery) -> AsyncIterator[FakeRemote]:
    r = FakeRemote()
    await r.start(nursery)
    yield r


@pytest.fixture
def local() -> Local:
    send, recv = trio.open_memory_channel[dict[str, Any]](100)
    return Local(send, recv)


def request(signaling_url: str, token: str = "good-token") -> fed.FederationRequest:
    return fed.parse_federation_room(
        {
            "roomid": "local-room",
            "sessionid": "talk-session",
            "federation": {
                "signaling": signaling_url,
                "url": REMOTE_NC,
                "roomid": "remote-room",
                "token": token,
            },
        }
    )


def make_link(local: Local, signaling_url: str, **kw: Any) -> FederationLink:
    token = kw.pop("token", "good-token")
    return FederationLink(
        request(signaling_url, token),
        local_session_id=LOCAL_SESSION,
        local_backend_url=LOCAL_BACKEND,
        deliver=local.deliver,
        features=("chat-relay",),
        join_id="join-1",
        **kw,
    )


def is_type(kind: str) -> Any:
    return lambda m: m.get("type") == kind


def is_event(etype: str) -> Any:
    return lambda m: m.get("type") == "event" and m["event"].get("type") == etype


async def joined(link: FederationLink, local: Local, nursery: trio.Nursery) -> dict[str, Any]:
    await nursery.start(link.run)
    return await local.until(is_type("room"))


async def test_link_connects_joins_and_maps_the_join_event(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        room = await joined(link, local, nursery)
        # the remote's join answer, with the client's id and the local room id
        assert room == {
            "id": "join-1",
            "type": "room",
            "room": {"roomid": "local-room", "properties": ROOM_PROPERTIES},
        }
        hello = remote.hellos[0]
        assert hello["hello"] == {
            "version": "2.0",
            "features": ["chat-relay"],
            "auth": {"type": "federation", "url": REMOTE_NC, "params": {"token": "good-token"}},
        }
        join = await remote.wait_for(is_type("room"))
        assert join == {
            "id": "join-1",
            "type": "room",
            "room": {"roomid": "remote-room", "sessionid": "talk-session"},
        }
        event = await local.next()
        entries = event["event"]["join"]
        # our own remote session is shown with our local id, the others keep theirs
        assert [e["sessionid"] for e in entries] == [OTHER_SESSION, LOCAL_SESSION]
        assert link.remote_session_id == "remote-own-1"
        link.close()
        await link.wait_finished()


async def test_messages_are_mapped_both_ways(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await joined(link, local, nursery)
        own = link.remote_session_id
        link.forward(
            {
                "id": "m1",
                "type": "message",
                "message": {
                    "recipient": {"type": "session", "sessionid": LOCAL_SESSION},
                    "data": {"x": 1},
                },
            }
        )
        link.forward(
            {
                "type": "transient",
                "transient": {"type": "set", "key": f"sd:{LOCAL_SESSION}", "value": 1},
            }
        )
        sent = await remote.wait_for(lambda m: m.get("id") == "m1")
        assert sent["message"]["recipient"] == {"type": "session", "sessionid": own}
        transient = await remote.wait_for(is_type("transient"))
        assert transient["transient"]["key"] == f"sd:{own}"

        await remote.push(
            {
                "type": "message",
                "message": {
                    "sender": {"type": "session", "sessionid": OTHER_SESSION, "userid": "other"},
                    "recipient": {"type": "session", "sessionid": own},
                    "data": {
                        "type": "offer",
                        "from": OTHER_SESSION,
                        "to": own,
                        "roomType": "video",
                    },
                },
            }
        )
        msg = await local.until(is_type("message"))
        assert msg["message"]["recipient"]["sessionid"] == LOCAL_SESSION
        assert msg["message"]["sender"]["sessionid"] == OTHER_SESSION
        assert msg["message"]["data"]["to"] == LOCAL_SESSION
        assert msg["message"]["data"]["from"] == OTHER_SESSION
        link.close()
        await link.wait_finished()


async def test_remote_drop_interrupts_and_resume_flushes_queued_messages(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await joined(link, local, nursery)
        await remote.drop()
        interrupted = await local.until(is_event("federation_interrupted"))
        assert interrupted == fed.interrupted_event()
        # sent while the link is down: queued, delivered after the resume
        link.forward(
            {
                "id": "late",
                "type": "message",
                "message": {
                    "recipient": {"type": "session", "sessionid": OTHER_SESSION},
                    "data": "x",
                },
            }
        )
        resumed = await local.until(is_event("federation_resumed"))
        assert resumed["event"]["resumed"] is True
        assert remote.hellos[-1]["hello"] == {
            "version": "2.0",
            "features": ["chat-relay"],
            "resumeid": "resume-1",
        }
        late = await remote.wait_for(lambda m: m.get("id") == "late")
        assert late["message"]["data"] == "x"
        assert remote.connections == 2
        assert link.remote_session_id == "remote-own-1"
        link.close()
        await link.wait_finished()


async def test_lost_remote_session_starts_a_new_one_and_rejoins(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await joined(link, local, nursery)
        remote.forget_sessions()
        await remote.drop()
        await local.until(is_event("federation_interrupted"))
        resumed = await local.until(is_event("federation_resumed"))
        assert resumed["event"]["resumed"] is False
        # the client gets a new room answer, without its join id this time, and fresh joins
        room = await local.next()
        assert room == {
            "type": "room",
            "room": {"roomid": "local-room", "properties": ROOM_PROPERTIES},
        }
        event = await local.next()
        assert [e["sessionid"] for e in event["event"]["join"]] == [OTHER_SESSION, LOCAL_SESSION]
        assert link.remote_session_id == "remote-own-2"
        rejoin = [m for m in remote.received if m.get("type") == "room"][-1]
        assert "id" not in rejoin
        link.close()
        await link.wait_finished()


async def test_remote_without_the_feature_header_is_unsupported(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    remote.header_features = ["hello-v2", "welcome"]
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await nursery.start(link.run)
        err = await local.next()
        assert err == {
            "id": "join-1",
            "type": "error",
            "error": {
                "code": "federation_unsupported",
                "message": "The target server does not support federation.",
            },
        }
        await link.wait_finished()
        assert remote.hellos == []


async def test_welcome_without_the_feature_is_unsupported(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    remote.welcome_features = ["hello-v2", "welcome"]
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await nursery.start(link.run)
        err = await local.next()
        assert err["error"]["code"] == "federation_unsupported"
        assert err["id"] == "join-1"
        await link.wait_finished()
        assert remote.hellos == []


async def test_bad_token_answer_reaches_the_client_and_ends_the_link(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url, token="bad-token")
        await nursery.start(link.run)
        err = await local.next()
        assert err == {
            "id": "join-1",
            "type": "error",
            "error": {"code": "invalid_token", "message": "The token could not be authenticated."},
        }
        await link.wait_finished()
        await remote.wait_for(is_type("bye"))
        with pytest.raises(fed.p.SignalingError) as exc:
            link.forward({"type": "message", "message": {}})
        assert exc.value.code == "federation_error"


async def test_leave_is_answered_by_the_remote_then_the_link_closes(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await joined(link, local, nursery)
        link.leave({"id": "leave-1", "type": "room", "room": {"roomid": ""}})
        answer = await local.until(is_type("room"))
        assert answer == {"id": "leave-1", "type": "room", "room": {"roomid": ""}}
        await link.wait_finished()
        await remote.wait_for(is_type("bye"))
        left = await remote.wait_for(lambda m: m.get("id") == "leave-1")
        assert left["room"] == {"roomid": ""}


async def test_unreachable_remote_is_a_federation_error_with_details(
    local: Local, nursery: trio.Nursery
) -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now: the dial is refused
    with trio.fail_after(LIMIT):
        link = make_link(local, f"http://127.0.0.1:{port}/")
        await nursery.start(link.run)
        err = await local.next()
        assert err["id"] == "join-1"
        assert err["error"]["code"] == "federation_error"
        assert err["error"]["message"] == "Failed to create federation client."
        assert err["error"]["details"]["code"] == "network_error"
        await link.wait_finished()


async def test_silent_remote_times_out_the_handshake(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    remote.answer_hello = False
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url, timeout=0.5)
        await nursery.start(link.run)
        err = await local.next()
        assert err["error"]["code"] == "federation_error"
        assert err["error"]["details"]["code"] == "network_error"
        await link.wait_finished()
        assert len(remote.hellos) == 1


async def test_close_says_bye_to_the_remote(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await joined(link, local, nursery)
        link.close()
        await link.wait_finished()
        assert await remote.wait_for(is_type("bye")) == {"type": "bye"}
        assert link.finished


async def test_a_failure_of_ours_is_an_error_to_the_client_not_a_traceback(
    remote: FakeRemote, local: Local, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str) -> list[fed.Effect]:
        raise KeyError(text)

    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await joined(link, local, nursery)
        monkeypatch.setattr(link.core, "receive", broken)
        await remote.push({"type": "event", "event": {"target": "room", "type": "leave"}})
        err = await local.until(is_type("error"))
        assert err == {
            "type": "error",
            "error": {"code": "federation_error", "message": "Internal federation error."},
        }
        await link.wait_finished()
        await remote.wait_for(is_type("bye"))


async def test_change_room_on_the_same_remote_reuses_the_connection(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url)
        await joined(link, local, nursery)
        other = fed.parse_federation_room(
            {
                "roomid": "local-2",
                "sessionid": "talk-session-2",
                "federation": {
                    "signaling": remote.signaling_url,
                    "url": REMOTE_NC,
                    "roomid": "remote-2",
                    "token": "good-token",
                },
            }
        )
        assert link.can_reuse(other)
        link.change_room(other, "join-2")
        room = await local.until(is_type("room"))
        assert room["id"] == "join-2"
        assert room["room"]["roomid"] == "local-2"
        join = await remote.wait_for(lambda m: m.get("id") == "join-2")
        assert join["room"] == {"roomid": "remote-2", "sessionid": "talk-session-2"}
        assert remote.connections == 1
        link.close()
        await link.wait_finished()


async def test_wss_remote_with_an_untrusted_certificate(
    local: Local, nursery: trio.Nursery
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    remote = FakeRemote(ssl_context=server_ctx)
    await remote.start(nursery)
    with trio.fail_after(LIMIT):
        untrusted = make_link(local, remote.signaling_url)
        await nursery.start(untrusted.run)
        err = await local.next()
        assert err["error"]["code"] == "federation_error"
        assert err["error"]["details"]["code"] == "certificate_verification_error"
        await untrusted.wait_finished()

        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        trusted = make_link(local, remote.signaling_url, ssl_context=client_ctx)
        room = await joined(trusted, local, nursery)
        assert room["room"]["roomid"] == "local-room"
        trusted.close()
        await trusted.wait_finished()


async def test_keepalive_pings_keep_a_quiet_link_up(
    remote: FakeRemote, local: Local, nursery: trio.Nursery
) -> None:
    with trio.fail_after(LIMIT):
        link = make_link(local, remote.signaling_url, ping_interval=0.02)
        await joined(link, local, nursery)
        await local.next()  # the join event
        await trio.sleep(0.2)  # several ping rounds, answered by the remote
        link.forward({"id": "after-pings", "type": "control", "control": {"data": 1}})
        await remote.wait_for(lambda m: m.get("id") == "after-pings")
        assert remote.connections == 1
        with pytest.raises(trio.WouldBlock):
            local.recv.receive_nowait()  # no interruption was reported
        link.close()
        await link.wait_finished()
