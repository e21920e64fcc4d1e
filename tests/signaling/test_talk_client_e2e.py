"""Nextcloud Talk against two real relay processes, end to end, in the order Talk does it.

Two Nextclouds (mocks that sign hello v2 tokens and publish keys as Talk does), each with
its own relay: L for the local Nextcloud (alice, bob), R for the remote one (carol). The
scenario plays Talk's server (admin check, signed room requests) and Talk's web client
(hello v2, room join, control, transient data, switchto, federation); every step asserts
what the client receives.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks.mock_nextcloud import MockNextcloud
from tests.signaling.conftest import TALK_PATH, Client
from tests.signaling.relay_processes import (
    RelayProcess,
    connect,
    federated_pair,
    is_event,
    join_ids,
)
from tests.signaling.talk_clients import hello_v2, room_request
from tests.signaling.talk_tokens import generate_talk_key, talk_token

LIMIT = 60  # seconds for the whole scenario, process starts included

# nextcloud/spreed lib/Signaling/Manager.php: `hasRequiredFeatures` (all five, else the
# admin check answers UPDATE_REQUIRED and BackendNotifier refuses to send) and
# `getSignalingServerMissingFeatures` (each one missing is an UPDATE_OPTIONAL warning).
TALK_REQUIRED = ("audio-video-permissions", "federation", "incall-all", "hello-v2", "switchto")
TALK_OPTIONAL = ("dialout", "join-features", "chat-relay", "changed-users")

# What Talk grants a moderator, and the same without `control` (Talk's participants
# request carries the permission strings the signaling server enforces).
ALL_PERMISSIONS = ["publish-media", "publish-audio", "publish-video", "publish-screen",
                   "control", "transient-data"]
NO_CONTROL = ["publish-media", "publish-audio", "publish-video", "transient-data"]


def now() -> int:
    return int(time.time())


def header_features(r: httpx.Response) -> list[str]:
    """The feature list as Talk's `getFeatureArray` reads it: split at commas, trimmed."""
    return [f.strip() for f in r.headers["x-spreed-signaling-features"].split(",")]


async def admin_check(relay: RelayProcess) -> None:
    """Talk's "High-performance backend" test (`Manager::checkServerCompatibility`)."""
    async with httpx.AsyncClient() as http:
        r = await http.get(relay.http_url + "api/v1/welcome")
    assert r.status_code == 200
    body = r.json()
    assert body["nextcloud-spreed-signaling"] == "Welcome" and body["version"]
    features = header_features(r)
    missing_required = [f for f in TALK_REQUIRED if f not in features]
    missing_optional = [f for f in TALK_OPTIONAL if f not in features]
    assert missing_required == [] and missing_optional == [], features
    # Talk compares Date with its clock (TIME_OUT_OF_SYNC): it must be there and parse.
    assert parsedate_to_datetime(r.headers["date"]).tzinfo is not None


async def backend(relay: RelayProcess, nc: MockNextcloud, room: str,
                  payload: dict[str, Any]) -> None:
    """A room request from Talk's BackendNotifier; Talk checks the features on its answer."""
    r = await room_request(relay.http_url.rstrip("/"), room, payload,
                           secret=nc.secret.decode(), backend=nc.url)
    assert r.status_code == 200, r.text
    assert set(TALK_REQUIRED) <= set(header_features(r))


async def join(c: Client, room: str, talk_session: str) -> None:
    reply = await c.join(room, talk_session)
    assert reply["type"] == "room" and reply["room"]["roomid"] == room, reply


async def test_talk_client_end_to_end(tmp_path: Path) -> None:
    keys = {alg: generate_talk_key(alg) for alg in ("RS256", "EdDSA", "ES256")}
    with trio.fail_after(LIMIT):
        async with federated_pair(tmp_path, keys["ES256"].public,
                                  local_key=keys["RS256"].public) as pair:
            await scenario(pair.relays.nursery, pair.relay_l, pair.relay_r, pair.local_nc,
                           pair.remote_nc, keys)


async def scenario(nursery: trio.Nursery, relay_l: RelayProcess, relay_r: RelayProcess,
                   local_nc: MockNextcloud, remote_nc: MockNextcloud,
                   keys: dict[str, Any]) -> None:
    # 1. The admin's check in Talk's settings: nothing required or optional is missing.
    await admin_check(relay_l)
    await admin_check(relay_r)

    # 2. hello v2. The local Nextcloud signs with RSA; alice connects.
    alice = await connect(nursery, relay_l, local_nc)
    reply = await hello_v2(alice, talk_token(keys["RS256"], now=now(), user_id="alice",
                                             display_name="Alice"))
    assert reply["type"] == "hello", reply
    assert reply["hello"]["version"] == "2.0" and reply["hello"]["userid"] == "alice"
    assert set(TALK_REQUIRED) <= set(reply["hello"]["server"]["features"])
    # The admin switches Talk to Ed25519 (a new key in the capabilities): bob's token
    # verifies after one refetch, published as Talk does (base64 of the raw key).
    local_nc.token_key = keys["EdDSA"].public
    bob = await connect(nursery, relay_l, local_nc)
    reply = await hello_v2(bob, talk_token(keys["EdDSA"], now=now(), user_id="bob",
                                           display_name="Bob"))
    assert reply["type"] == "hello" and reply["hello"]["userid"] == "bob", reply
    assert local_nc.capabilities_fetches == 2
    # The remote Nextcloud signs with ECDSA (P-256); carol is its user, on R.
    carol = await connect(nursery, relay_r, remote_nc)
    reply = await hello_v2(carol, talk_token(keys["ES256"], now=now(), user_id="carol",
                                             display_name="Carol"))
    assert reply["type"] == "hello" and reply["hello"]["userid"] == "carol", reply

    # 3. Room join: Nextcloud is asked with the Talk session id; each sees the other.
    await join(alice, "conv", "talk-alice")
    await alice.recv_until(lambda m: alice.session_id in join_ids(m))
    await join(bob, "conv", "talk-bob")
    seen = await alice.recv_until(lambda m: bob.session_id in join_ids(m))
    (entry,) = [e for e in seen["event"]["join"] if e["sessionid"] == bob.session_id]
    assert entry["userid"] == "bob" and entry["roomsessionid"] == "talk-bob"
    assert entry["user"] == {"displayname": "Bob"}
    members = await bob.recv_until(lambda m: alice.session_id in join_ids(m))
    (entry,) = [e for e in members["event"]["join"] if e["sessionid"] == alice.session_id]
    assert entry["userid"] == "alice" and entry["user"] == {"displayname": "Alice"}
    asked = {r["room"]["sessionid"]: r["room"] for r in local_nc.of_type("room")}
    assert asked["talk-bob"]["userid"] == "bob" and asked["talk-bob"]["roomid"] == "conv"

    # 4. Permissions: bob may send `control` (mute alice) until Talk takes it away.
    mute = {"type": "mute", "audio": 1}
    await bob.message({"type": "session", "sessionid": alice.session_id}, mute, kind="control")
    got = await alice.recv_until(lambda m: m.get("type") == "control")
    assert got["control"]["data"] == mute
    assert got["control"]["sender"]["sessionid"] == bob.session_id
    changed = {"sessionId": "talk-bob", "participantType": 3, "participantPermissions": 126,
               "permissions": NO_CONTROL}
    await backend(relay_l, local_nc, "conv", {"type": "participants", "participants": {
        "changed": [changed], "users": [changed, {"sessionId": "talk-alice",
                                                   "permissions": ALL_PERMISSIONS}]}})
    shown = {"sessionId": bob.session_id, "participantType": 3, "participantPermissions": 126}
    for c in (alice, bob):
        update = await c.recv_until(lambda m: is_event(m, "update"))
        assert update["event"]["target"] == "participants"
        assert update["event"]["update"] == {
            "roomid": "conv", "changed": [shown],
            "users": [shown, {"sessionId": alice.session_id}]}
    await bob.message({"type": "session", "sessionid": alice.session_id}, mute, kind="control")
    await bob.message({"type": "session", "sessionid": alice.session_id}, {"after": "mute"})
    got = await alice.recv_until(lambda m: m.get("type") in ("control", "message"))
    assert got["type"] == "message" and got["message"]["data"] == {"after": "mute"}

    # 5. switchto: Talk sends alice to a breakout room; she follows, bob stays.
    await backend(relay_l, local_nc, "conv", {"type": "switchto", "switchto": {
        "roomid": "breakout-1", "sessions": ["talk-alice"]}})
    ev = await alice.recv_until(lambda m: is_event(m, "switchto"))
    assert ev["event"] == {"target": "room", "type": "switchto",
                           "switchto": {"roomid": "breakout-1"}}
    await join(alice, "breakout-1", "talk-alice")
    gone = await bob.recv_until(lambda m: is_event(m, "leave"))
    assert gone["event"]["leave"] == [alice.session_id]
    # The map form carries details (here: back to the main room).
    await backend(relay_l, local_nc, "breakout-1", {"type": "switchto", "switchto": {
        "roomid": "conv", "sessions": {"talk-alice": {"reason": "breakout-ended"}}}})
    ev = await alice.recv_until(lambda m: is_event(m, "switchto"))
    assert ev["event"]["switchto"] == {"roomid": "conv",
                                       "details": {"reason": "breakout-ended"}}

    # 6. Transient data: bob (still `transient-data`) sets a key; alice, coming back,
    # gets it as `initial`; her removal reaches both.
    await bob.send({"type": "transient", "transient": {"type": "set", "key": "poll",
                                                       "value": {"open": True}}})
    got = await bob.recv_until(lambda m: m.get("type") == "transient")
    assert got["transient"] == {"type": "set", "key": "poll", "value": {"open": True}}
    await alice.send({"id": "back", "type": "room", "room": {"roomid": "conv",
                                                             "sessionid": "talk-alice"}})
    initial = await alice.recv_until(lambda m: m.get("type") == "transient")
    assert initial["transient"] == {"type": "initial", "data": {"poll": {"open": True}}}
    await bob.recv_until(lambda m: alice.session_id in join_ids(m))
    await alice.send({"type": "transient", "transient": {"type": "remove", "key": "poll"}})
    for c in (alice, bob):
        got = await c.recv_until(lambda m: m.get("type") == "transient")
        assert got["transient"] == {"type": "remove", "key": "poll",
                                    "oldvalue": {"open": True}}

    # 7. Federation: carol's conversation lives on the remote Nextcloud (relay R); alice
    # joins it through relay L with the token the remote Nextcloud issued her.
    await join(carol, "conv-remote", "talk-carol")
    await carol.recv_until(lambda m: carol.session_id in join_ids(m))
    token = talk_token(keys["ES256"], now=now(), cloud_id="alice@local.example",
                       display_name="Alice")
    await alice.send({"id": "fed", "type": "room", "room": {
        "roomid": "conv-fed", "sessionid": "talk-alice-fed", "federation": {
            "signaling": relay_r.http_url, "url": remote_nc.url + TALK_PATH,
            "roomid": "conv-remote", "token": token}}})
    reply = await alice.recv_until(lambda m: m.get("id") == "fed")
    assert reply["type"] == "room" and reply["room"]["roomid"] == "conv-fed", reply
    gone = await bob.recv_until(lambda m: is_event(m, "leave"))
    assert gone["event"]["leave"] == [alice.session_id]
    seen_ids: set[str] = set()
    while not {carol.session_id, alice.session_id} <= seen_ids:
        seen_ids.update(join_ids(await alice.recv_until(lambda m: bool(join_ids(m)))))
    seen = await carol.recv_until(
        lambda m: any(e.get("federated") for e in (m.get("event", {}).get("join") or [])))
    (entry,) = [e for e in seen["event"]["join"] if e.get("federated")]
    assert entry["userid"] == "alice@local.example"
    assert entry["roomsessionid"] == "talk-alice-fed"
    alice_on_r = entry["sessionid"]
    await alice.message({"type": "session", "sessionid": carol.session_id}, {"offer": 1})
    got = await carol.recv_until(lambda m: m.get("type") == "message")
    assert got["message"]["sender"]["sessionid"] == alice_on_r
    assert got["message"]["data"] == {"offer": 1}
    await carol.message({"type": "session", "sessionid": alice_on_r}, {"answer": 1})
    got = await alice.recv_until(lambda m: m.get("type") == "message")
    assert got["message"]["sender"]["sessionid"] == carol.session_id
    assert got["message"]["data"] == {"answer": 1}
    # Leaving: R answers through the link; carol sees alice's remote session go.
    await alice.send({"id": "leave", "type": "room", "room": {"roomid": ""}})
    left = await alice.recv_until(lambda m: m.get("id") == "leave")
    assert left == {"id": "leave", "type": "room", "room": {"roomid": ""}}
    gone = await carol.recv_until(lambda m: is_event(m, "leave"))
    assert gone["event"]["leave"] == [alice_on_r]
    for c in (alice, bob, carol):
        await c.ws.aclose()
