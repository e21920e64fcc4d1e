"""Federation between two real relay processes (`python -m relay`), each with its own mock
Nextcloud on 127.0.0.1.

Alice is a user of the local Nextcloud and connects to relay L; the conversation lives on
the remote Nextcloud, whose signaling server is relay R, where Bob is. Alice joins through
L with the token R's Nextcloud issued her (hello v2, `sub` = her cloud id); L dials R
through a TCP forwarder, so the test can cut the link's socket like a network failure.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from benchmarks.mock_nextcloud import MockNextcloud
from tests.signaling.relay_processes import (
    TALK_PATH,
    RelayProcess,
    connect,
    federated_pair,
    is_event,
    join_ids,
    stop_relay,
)
from tests.signaling.talk_tokens import generate_talk_key, talk_token

LIMIT = 60  # seconds for the whole scenario, process starts included


@attrs.define(eq=False)
class Forwarder:
    """TCP forwarder to `target`; `cut()` drops every connection it carries."""

    target: int
    port: int = 0
    accepted: int = 0
    _scopes: list[trio.CancelScope] = attrs.Factory(list)

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
            except OSError:  # nobody there (a relay restarting): like a refused dial
                await trio.aclose_forcefully(client)
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pipe, upstream, client, nursery.cancel_scope)
        await trio.aclose_forcefully(client)

    @staticmethod
    async def _pipe(src: trio.SocketStream, dst: trio.SocketStream,
                    scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def cut(self) -> None:
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()


async def test_a_client_of_one_relay_joins_a_room_on_another(tmp_path: Path) -> None:
    key = generate_talk_key("ES256")
    with trio.fail_after(LIMIT):
        async with federated_pair(tmp_path, key.public) as pair:
            await scenario(pair.relays.nursery, pair.relay_l, pair.relay_r, pair.local_nc,
                           pair.remote_nc, key)


async def scenario(nursery: trio.Nursery, relay_l: RelayProcess, relay_r: RelayProcess,
                   local_nc: MockNextcloud, remote_nc: MockNextcloud, key: Any) -> None:
    link = Forwarder(relay_r.port)
    await link.start(nursery)

    # Bob on R, in the remote conversation.
    bob = await connect(nursery, relay_r, remote_nc)
    assert (await bob.hello("bob"))["type"] == "hello"
    assert (await bob.join("conv-remote", "talk-bob"))["type"] == "room"
    await bob.recv_until(lambda m: bob.session_id in join_ids(m))

    # Alice on L joins it through federation.
    alice = await connect(nursery, relay_l, local_nc)
    assert (await alice.hello("alice"))["type"] == "hello"
    token = talk_token(key, now=int(time.time()), cloud_id="alice@local.example",
                       display_name="Alice")
    await alice.send({"id": "join-1", "type": "room", "room": {
        "roomid": "conv-local", "sessionid": "talk-alice", "federation": {
            "signaling": f"http://127.0.0.1:{link.port}",
            "url": remote_nc.url + TALK_PATH, "roomid": "conv-remote", "token": token}}})
    reply = await alice.recv_until(lambda m: m.get("type") in ("room", "error"))
    assert reply["type"] == "room", reply
    assert reply["id"] == "join-1" and reply["room"]["roomid"] == "conv-local"
    # Join events of R's room: Bob by his R id, herself by her L id (mapped back).
    seen_ids: set[str] = set()
    while not {bob.session_id, alice.session_id} <= seen_ids:
        seen_ids.update(join_ids(await alice.recv_until(lambda m: bool(join_ids(m)))))

    # Bob sees her join R's room as a federated session with her cloud id.
    seen = await bob.recv_until(
        lambda m: any(e.get("federated") for e in (m.get("event", {}).get("join") or [])))
    (entry,) = [e for e in seen["event"]["join"] if e.get("federated")]
    assert entry["userid"] == "alice@local.example"
    assert entry["user"] == {"displayname": "Alice"}
    assert entry["roomsessionid"] == "talk-alice"
    alice_on_r = entry["sessionid"]
    assert alice_on_r != alice.session_id
    # R's Nextcloud was asked about the cloud id; L's Nextcloud about nothing but auth.
    (req,) = [r["room"] for r in remote_nc.of_type("room") if r["room"]["sessionid"] ==
              "talk-alice"]
    assert req["userid"] == "alice@local.example" and req["roomid"] == "conv-remote"
    assert local_nc.of_type("room") == []
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(relay_r.http_url + "metrics")).text
    assert 'signaling_hub_sessions{backend="remote",clienttype="federation"} 1.0' in metrics

    async def exchange(n: int) -> None:
        # Alice -> Bob: R delivers it from her R session.
        await alice.message({"type": "session", "sessionid": bob.session_id},
                            {"type": "offer", "n": n})
        got = await bob.recv_until(lambda m: m.get("type") == "message")
        assert got["message"]["sender"]["sessionid"] == alice_on_r
        assert got["message"]["data"] == {"type": "offer", "n": n}
        # Bob -> Alice, addressed to her R id: she gets it with her L id.
        await bob.message({"type": "session", "sessionid": alice_on_r},
                          {"type": "answer", "to": alice_on_r, "from": bob.session_id, "n": n})
        got = await alice.recv_until(lambda m: m.get("type") == "message")
        assert got["message"]["sender"]["sessionid"] == bob.session_id
        assert got["message"]["data"] == {"type": "answer", "to": alice.session_id,
                                          "from": bob.session_id, "n": n}

    await exchange(1)

    # The link's socket dies: Alice hears of the interruption, then of the resume.
    connections = link.accepted
    link.cut()
    ev = await alice.recv_until(lambda m: m.get("type") == "event")
    assert ev == {"type": "event", "event": {"target": "room",
                                             "type": "federation_interrupted"}}
    ev = await alice.recv_until(lambda m: is_event(m, "federation_resumed"))
    assert ev["event"] == {"target": "room", "type": "federation_resumed", "resumed": True}
    assert link.accepted > connections
    await exchange(2)

    # Alice leaves: R's answer reaches her, Bob sees her R session leave.
    await alice.send({"id": "leave-1", "type": "room", "room": {"roomid": ""}})
    left = await alice.recv_until(lambda m: m.get("type") == "room")
    assert left == {"id": "leave-1", "type": "room", "room": {"roomid": ""}}
    gone = await bob.recv_until(lambda m: is_event(m, "leave"))
    assert gone["event"]["leave"] == [alice_on_r]
    await bob.ws.aclose()
    await alice.ws.aclose()


async def test_the_remote_relay_restarts(tmp_path: Path) -> None:
    """R's process is replaced: L's link gets no resume there, so it creates a new remote
    session with the same token and joins again (`federation_resumed` `resumed:false`)."""
    key = generate_talk_key("EdDSA")
    with trio.fail_after(LIMIT):
        async with federated_pair(tmp_path, key.public) as pair:
            relays, relay_l, relay_r = pair.relays, pair.relay_l, pair.relay_r
            local_nc, remote_nc = pair.local_nc, pair.remote_nc
            link = Forwarder(relay_r.port)
            await link.start(relays.nursery)
            alice = await connect(relays.nursery, relay_l, local_nc)
            await alice.hello("alice")
            token = talk_token(key, now=int(time.time()), cloud_id="alice@local.example")
            await alice.send({"id": "j", "type": "room", "room": {
                "roomid": "conv-local", "sessionid": "talk-alice", "federation": {
                    "signaling": f"http://127.0.0.1:{link.port}",
                    "url": remote_nc.url + TALK_PATH, "roomid": "conv-remote",
                    "token": token}}})
            reply = await alice.recv_until(lambda m: m.get("type") in ("room", "error"))
            assert reply["type"] == "room" and reply["id"] == "j"
            await alice.recv_until(lambda m: alice.session_id in join_ids(m))

            # The new R process takes over the address (as behind a load balancer),
            # then the old one stops, taking its sessions with it.
            relay_r2 = await relays.start("remote2", remote_nc)
            link.target = relay_r2.port
            await stop_relay(relay_r)
            ev = await alice.recv_until(lambda m: m.get("type") == "event")
            assert is_event(ev, "federation_interrupted")
            ev = await alice.recv_until(lambda m: is_event(m, "federation_resumed"))
            assert ev["event"]["resumed"] is False
            # Joined again: a new room answer (no id) and fresh join events.
            again = await alice.recv_until(lambda m: m.get("type") == "room")
            assert "id" not in again and again["room"]["roomid"] == "conv-local"
            await alice.recv_until(lambda m: alice.session_id in join_ids(m))

            bob = await connect(relays.nursery, relay_r2, remote_nc)
            await bob.hello("bob")
            await bob.join("conv-remote", "talk-bob")
            seen = await bob.recv_until(lambda m: any(
                e.get("federated") for e in (m.get("event", {}).get("join") or [])))
            (entry,) = [e for e in seen["event"]["join"] if e.get("federated")]
            assert entry["userid"] == "alice@local.example"
            await bob.message({"type": "session", "sessionid": entry["sessionid"]},
                              {"hello": "again"})
            got = await alice.recv_until(lambda m: m.get("type") == "message")
            assert got["message"]["data"] == {"hello": "again"}
            assert got["message"]["sender"]["sessionid"] == bob.session_id
