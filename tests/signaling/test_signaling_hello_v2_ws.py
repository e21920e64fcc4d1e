"""hello v2 (Talk's JWT) and incoming federation hellos over the real `/spreed` WebSocket.

The mock Nextcloud publishes a key made as Talk makes it (`talk_tokens`) in its
capabilities; tokens are signed the way Talk signs them.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import trio

from tests.signaling.conftest import SECRET, TALK_PATH, Server
from tests.signaling.talk_clients import hello_v2
from tests.signaling.talk_tokens import (
    TalkKey,
    encode_token,
    generate_talk_key,
    talk_claims,
    talk_token,
)
from tests.signaling.test_signaling_backend_room_api import post


def now() -> int:
    return int(time.time())


def with_key(server: Server, alg: str = "ES256") -> TalkKey:
    key = generate_talk_key(alg)
    server.nextcloud.token_key = key.public
    return key


def join_entries(msg: dict[str, Any]) -> list[dict[str, Any]]:
    ev = msg.get("event", {})
    if msg.get("type") == "event" and ev.get("target") == "room" and ev.get("type") == "join":
        return list(ev["join"])
    return []


async def metrics(server: Server) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
        return (await c.get("/metrics")).text


@pytest.mark.parametrize("alg", ["RS256", "ES256", "ES384", "EdDSA"])
async def test_hello_v2_with_talk_tokens(server: Server, alg: str) -> None:
    key = with_key(server, alg)
    with trio.fail_after(10):
        a = await server.client()
        token = talk_token(key, now=now(), user_id="alice", display_name="Alice A.")
        reply = await hello_v2(a, token, features=["chat-relay"])
        assert reply["type"] == "hello", reply
        h = reply["hello"]
        assert h["version"] == "2.0" and h["userid"] == "alice"
        assert "hello-v2" in h["server"]["features"]
        # No v1 auth request: the token alone authenticates.
        assert server.nextcloud.of_type("auth") == []
        assert (await a.join("room-1", "talk-a"))["type"] == "room"
        (req,) = server.nextcloud.of_type("room")
        assert req["room"]["userid"] == "alice" and req["room"]["sessionid"] == "talk-a"
        own = await a.recv_until(lambda m: bool(join_entries(m)))
        assert join_entries(own)[0]["user"] == {"displayname": "Alice A."}

        b = await server.client()
        assert (await b.hello("bob"))["type"] == "hello"
        await b.join("room-1", "talk-b")
        seen = await b.recv_until(
            lambda m: any(e["sessionid"] == a.session_id for e in join_entries(m)))
        (entry,) = [e for e in join_entries(seen) if e["sessionid"] == a.session_id]
        assert entry["userid"] == "alice"
        assert entry["user"] == {"displayname": "Alice A."}
        assert entry["features"] == ["chat-relay"]
        assert "federated" not in entry


async def test_guest_token_is_an_anonymous_session(server: Server) -> None:
    key = with_key(server, "ES256")
    with trio.fail_after(10):
        g = await server.client()
        reply = await hello_v2(g, talk_token(key, now=now()))
        assert reply["type"] == "hello" and reply["hello"]["userid"] == ""
        await g.join("room-1", "talk-guest")
        (req,) = server.nextcloud.of_type("room")
        assert req["room"]["userid"] == "" and req["room"]["sessionid"] == "talk-guest"
        own = await g.recv_until(lambda m: bool(join_entries(m)))
        (entry,) = join_entries(own)
        assert entry["userid"] == "" and "user" not in entry


def _claims_without(name: str) -> dict[str, Any]:
    claims = talk_claims(now=now(), user_id="alice")
    del claims[name]
    return claims


ERROR_CASES: list[tuple[str, Any, str]] = [
    # (case, how to build the hello, expected error code)
    ("version", "3.0", "invalid_hello_version"),
    ("no token", None, "invalid_format"),
    ("empty token", "", "invalid_format"),
    ("token not a string", 42, "invalid_format"),
    ("unknown backend", "backend", "invalid_backend"),
    ("malformed", "not-a-jwt", "invalid_token"),
    ("other key", "other-key", "invalid_token"),
    ("HS256", "hs256", "invalid_token"),
    ("alg none", "none", "invalid_token"),
    ("expired", "expired", "token_expired"),
    ("exp missing", "no-exp", "token_expired"),
    ("exp before iat", "exp-before-iat", "token_expired"),
    ("issued in the future", "future", "token_not_valid_yet"),
    ("iat missing", "no-iat", "token_not_valid_yet"),
    ("client type", "unknown-type", "invalid_client_type"),
]


@pytest.mark.parametrize(("case", "what", "code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
async def test_hello_v2_errors_then_a_good_hello(
    server: Server, case: str, what: Any, code: str
) -> None:
    key = with_key(server, "ES256")
    t = now()
    good = talk_token(key, now=t, user_id="alice")
    kwargs: dict[str, Any] = {}
    token: Any = good
    if what == "3.0":
        kwargs["version"] = "3.0"
    elif what is None or what == "" or what == 42:
        token = what
    elif what == "backend":
        kwargs["url"] = "http://127.0.0.2:1/" + TALK_PATH
    elif what == "other-key":
        token = talk_token(generate_talk_key("ES256"), now=t, user_id="alice")
    elif what == "hs256":
        token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    elif what == "none":
        token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."
    elif what == "expired":
        token = talk_token(key, now=t - 200, user_id="alice")
    elif what == "future":
        token = talk_token(key, now=t + 200, user_id="alice")
    elif what == "no-exp":
        token = encode_token(key, _claims_without("exp"))
    elif what == "no-iat":
        token = encode_token(key, _claims_without("iat"))
    elif what == "exp-before-iat":
        claims = talk_claims(now=t, user_id="alice")
        claims["exp"] = t - 10
        token = encode_token(key, claims)
    elif what == "unknown-type":
        kwargs["auth_type"] = "robot"  # internal and federation hellos are tested elsewhere
    else:
        token = what
    with trio.fail_after(10):
        c = await server.client()
        reply = await hello_v2(c, token, **kwargs)
        assert reply["type"] == "error", reply
        assert reply["error"]["code"] == code
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
        # The connection is still usable: a good hello succeeds.
        reply = await hello_v2(c, good)
        assert reply["type"] == "hello" and reply["hello"]["userid"] == "alice"


async def test_hello_v2_without_published_key_is_invalid_token(server: Server) -> None:
    key = generate_talk_key("ES256")  # Nextcloud publishes no key
    with trio.fail_after(10):
        c = await server.client()
        reply = await hello_v2(c, talk_token(key, now=now(), user_id="alice"))
        assert reply["type"] == "error" and reply["error"]["code"] == "invalid_token"


async def test_hello_v2_session_limit(make_server: Any, nextcloud: Any) -> None:
    key = generate_talk_key("EdDSA")
    nextcloud.token_key = key.public
    raw = {"version": "v1", "auth": {"type": "none"}, "signaling": {
        "http": {"listen": "127.0.0.1:0"}, "backend": {"backends": [
            {"id": "nc1", "urls": [nextcloud.url], "secret": SECRET, "sessionlimit": 1}]}}}
    with trio.fail_after(10):
        server = await make_server(raw)
        a = await server.client()
        assert (await hello_v2(a, talk_token(key, now=now(), user_id="a")))["type"] == "hello"
        b = await server.client()
        reply = await hello_v2(b, talk_token(key, now=now(), user_id="b"))
        assert reply["type"] == "error" and reply["error"]["code"] == "session_limit_exceeded"


async def test_key_rotation_is_picked_up(server: Server) -> None:
    old = with_key(server, "ES256")
    with trio.fail_after(10):
        a = await server.client()
        assert (await hello_v2(a, talk_token(old, now=now(), user_id="a")))["type"] == "hello"
        fetched = server.nextcloud.capabilities_fetches
        # Talk's admin switches the algorithm: a new key pair is published.
        new = with_key(server, "RS256")
        b = await server.client()
        reply = await hello_v2(b, talk_token(new, now=now(), user_id="b"))
        assert reply["type"] == "hello" and reply["hello"]["userid"] == "b"
        assert server.nextcloud.capabilities_fetches > fetched
        # Tokens signed with the retired key no longer pass.
        c = await server.client()
        reply = await hello_v2(c, talk_token(old, now=now(), user_id="c"))
        assert reply["type"] == "error" and reply["error"]["code"] == "invalid_token"


# --- a remote server's federation link (hello auth.type "federation") --------------------


async def test_federation_hello_needs_federation_v2(server: Server) -> None:
    key = with_key(server, "ES256")
    server.nextcloud.features = ["signaling-v3"]
    with trio.fail_after(10):
        c = await server.client()
        token = talk_token(key, now=now(), cloud_id="carol@other.example", display_name="Carol")
        reply = await hello_v2(c, token, auth_type="federation")
        assert reply["type"] == "error"
        assert reply["error"]["code"] == "federation_unsupported"


async def test_federation_session_joins_like_talk_expects(server: Server) -> None:
    key = with_key(server, "ES256")
    server.nextcloud.features = ["signaling-v3", "federation-v2"]
    with trio.fail_after(15):
        local = await server.client()
        assert (await local.hello("alice"))["type"] == "hello"
        await local.join("room-1", "talk-alice")
        await local.recv_until(lambda m: bool(join_entries(m)))

        fed = await server.client()
        claims = talk_claims(now=now(), cloud_id="carol@other.example", display_name="Carol")
        claims["userdata"].update({"actorId": "carol@other.example",
                                   "actorType": "federated_users"})
        reply = await hello_v2(fed, encode_token(key, claims), auth_type="federation",
                               features=["chat-relay"])
        assert reply["type"] == "hello", reply
        assert reply["hello"]["userid"] == "carol@other.example"
        assert (await fed.join("room-1", "talk-carol"))["type"] == "room"
        req = server.nextcloud.of_type("room")[-1]["room"]
        assert req["userid"] == "carol@other.example" and req["sessionid"] == "talk-carol"
        assert (req["actorid"], req["actortype"]) == ("carol@other.example", "federated_users")

        seen = await local.recv_until(
            lambda m: any(e["sessionid"] == fed.session_id for e in join_entries(m)))
        (entry,) = [e for e in join_entries(seen) if e["sessionid"] == fed.session_id]
        assert entry["federated"] is True
        assert entry["userid"] == "carol@other.example"
        assert entry["roomsessionid"] == "talk-carol"
        assert entry["features"] == ["chat-relay"]

        text = await metrics(server)
        assert 'signaling_hub_sessions{backend="nc1",clienttype="federation"} 1.0' in text
        assert 'signaling_hub_sessions_total{backend="nc1",clienttype="federation"} 1.0' in text

        # `incall` for everyone: the local session joins the call, the federated one not.
        await fed.drain(0.1)
        r = await post(server, "room-1", {"type": "incall", "incall": {"incall": 1, "all": True}})
        assert r.status_code == 200
        await local.recv_until(lambda m: m.get("event", {}).get("target") == "participants")
        await fed.nothing(0.2)
        await local.message({"type": "call"}, {"x": 1})
        await fed.nothing(0.2)
        # ... but it hears that the call ended.
        r = await post(server, "room-1", {"type": "incall", "incall": {"incall": 0, "all": True}})
        assert r.status_code == 200
        ended = await fed.recv_until(lambda m: m.get("event", {}).get("target") == "participants")
        assert ended["event"]["update"] == {"roomid": "room-1", "incall": 0, "all": True}
        # Messages to the federated session's id reach it.
        await local.message({"type": "session", "sessionid": fed.session_id}, {"y": 2})
        got = await fed.recv_until(lambda m: m.get("type") == "message")
        assert got["message"]["data"] == {"y": 2}
        assert got["message"]["sender"]["sessionid"] == local.session_id


async def test_federation_session_without_actor_fields(server: Server) -> None:
    key = with_key(server, "EdDSA")
    server.nextcloud.features = ["signaling-v3", "federation-v2"]
    with trio.fail_after(10):
        fed = await server.client()
        token = talk_token(key, now=now(), cloud_id="dave@other.example", display_name="Dave")
        assert (await hello_v2(fed, token, auth_type="federation"))["type"] == "hello"
        await fed.join("room-2", "talk-dave")
        req = server.nextcloud.of_type("room")[-1]["room"]
        assert req["userid"] == "dave@other.example"
        assert "actorid" not in req and "actortype" not in req
        # The federation session resumes like any session (the link's reconnect).
        rid = fed.resume_id
        await fed.ws.aclose()
        again = await server.client()
        reply = await again.request({"type": "hello", "hello": {"version": "2.0",
                                                                "resumeid": rid}})
        assert reply["type"] == "hello" and reply["hello"]["sessionid"] == fed.session_id


async def test_one_capabilities_request_serves_hello_v2_and_the_endpoint(
    server: Server,
) -> None:
    """The token key and the `signaling-v3` check come from one cached document: a bare
    Nextcloud URL in the hello needs both, and Nextcloud is asked once."""
    key = with_key(server, "RS256")
    with trio.fail_after(10):
        a = await server.client()
        reply = await hello_v2(a, talk_token(key, now=now(), user_id="alice"),
                               url=server.nextcloud.url)
        assert reply["type"] == "hello", reply
        assert (await a.join("room-1", "talk-alice"))["type"] == "room"
        b = await server.client()
        assert (await b.hello("bob", url=server.nextcloud.url))["type"] == "hello"
        assert (await b.join("room-1", "talk-bob"))["type"] == "room"
    assert server.nextcloud.capabilities_fetches == 1
    posts = [p for p in server.nextcloud.paths if p.startswith("/ocs/v2.php/apps/spreed/")]
    assert posts and all(p == "/" + TALK_PATH for p in posts), posts
    assert [r["type"] for r in server.nextcloud.requests] == ["room", "auth", "room"]
