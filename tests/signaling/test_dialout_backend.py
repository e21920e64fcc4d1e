"""Dial-out end to end: Nextcloud's backend `dialout` request, a SIP bridge (internal
client with `start-dialout`) answering it, and the call status as room transient data."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.signaling.conftest import Client, Server
from tests.signaling.internal_clients import internal_config, internal_hello
from tests.signaling.test_signaling_backend_room_api import post

ROOM = "123"  # dial-out needs Talk's numeric room ids
REQUEST = {"type": "dialout", "dialout": {"number": "+491701234567", "options": {
    "attendeeId": 7, "actorType": "phones", "actorId": "phone-7"}}}


def _transient(m: dict[str, Any]) -> bool:
    return m.get("type") == "transient"


async def _setup(make_server: Any, nextcloud: Any) -> tuple[Server, Client, Client]:
    srv: Server = await make_server(internal_config(nextcloud))
    alice = await srv.client()
    await alice.hello("alice")
    await alice.join(ROOM, "talk-a")
    bridge = await srv.client()
    r = await internal_hello(bridge, features=["start-dialout"])
    assert r["type"] == "hello"
    await alice.drain(0.1)
    return srv, alice, bridge


async def _dial(srv: Server, results: list[httpx.Response], payload: Any = REQUEST,
                room: str = ROOM) -> None:
    results.append(await post(srv, room, payload))


async def _request_to(bridge: Client) -> dict[str, Any]:
    return await bridge.recv_until(lambda m: m.get("type") == "internal")


async def test_accepted_call_answers_the_callid_and_publishes_its_status(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(30):
        srv, alice, bridge = await _setup(make_server, nextcloud)
        results: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_dial, srv, results)
            req = await _request_to(bridge)
            assert len(req["id"]) == 32
            assert req["internal"] == {"type": "dialout", "dialout": {
                "roomid": ROOM, "backend": nextcloud.url,
                "request": REQUEST["dialout"]}}
            # other backend requests are not held up meanwhile
            other = await post(srv, ROOM, {"type": "message", "message": {"data": {}}})
            assert other.status_code == 200 and not results
            await bridge.send({"id": req["id"], "type": "internal", "internal": {
                "type": "dialout", "dialout": {"type": "status", "roomid": ROOM,
                                               "status": {"callid": "call-1",
                                                          "status": "accepted"}}}})
        [r] = results
        assert r.status_code == 200
        assert r.json() == {"type": "dialout", "dialout": {"callid": "call-1"}}
        assert "dialout" in r.headers["x-spreed-signaling-features"].split(", ")
        m = await alice.recv_until(_transient)
        assert m == {"type": "transient", "transient": {
            "type": "set", "key": "callstatus_call-1",
            "value": {"callid": "call-1", "status": "accepted"}}}
        # later reports of the bridge update the room's data
        await bridge.send({"type": "internal", "internal": {"type": "dialout", "dialout": {
            "type": "status", "roomid": ROOM, "status": {
                "callid": "call-1", "status": "ringing"}}}})
        m = await alice.recv_until(_transient)
        assert m["transient"] == {
            "type": "set", "key": "callstatus_call-1",
            "oldvalue": {"callid": "call-1", "status": "accepted"},
            "value": {"callid": "call-1", "status": "ringing"}}
        # the bridge is no candidate any more once it joined a room
        await bridge.join(ROOM)
        r = await post(srv, ROOM, REQUEST)
        assert r.status_code == 404


async def test_bridge_error_is_a_502_with_that_error(make_server: Any, nextcloud: Any) -> None:
    with trio.fail_after(30):
        srv, alice, bridge = await _setup(make_server, nextcloud)
        results: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_dial, srv, results)
            req = await _request_to(bridge)
            await bridge.send({"id": req["id"], "type": "internal", "internal": {
                "type": "dialout", "dialout": {"type": "error", "error": {
                    "code": "no_sip_trunk", "message": "No SIP trunk configured",
                    "details": {"why": "test"}}}}})
        [r] = results
        assert r.status_code == 502
        assert r.json() == {"type": "dialout", "dialout": {"error": {
            "code": "no_sip_trunk", "message": "No SIP trunk configured",
            "details": {"why": "test"}}}}
        await alice.nothing(0.2)  # an error answer is not broadcast


async def test_unsupported_status_tries_the_next_candidate(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(30):
        srv, alice, first = await _setup(make_server, nextcloud)
        second = await srv.client()
        await internal_hello(second, features=["start-dialout"])
        results: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_dial, srv, results)
            req = await _request_to(first)
            await first.send({"id": req["id"], "type": "internal", "internal": {
                "type": "dialout", "dialout": {"type": "status", "roomid": ROOM,
                                               "status": {"callid": "c0",
                                                          "status": "ringing"}}}})
            req2 = await _request_to(second)
            assert req2["id"] != req["id"]
            await second.send({"id": req2["id"], "type": "internal", "internal": {
                "type": "dialout", "dialout": {"type": "status", "roomid": ROOM,
                                               "status": {"callid": "c2",
                                                          "status": "accepted"}}}})
        assert results[0].status_code == 200
        assert results[0].json() == {"type": "dialout", "dialout": {"callid": "c2"}}
        # both status answers were also status reports for the room
        got = [m["transient"] for m in await alice.drain(0.3) if _transient(m)]
        assert [(t["key"], t["value"]["status"]) for t in got] == [
            ("callstatus_c0", "ringing"), ("callstatus_c2", "accepted")]


async def test_no_candidate_and_bad_requests(make_server: Any, nextcloud: Any) -> None:
    with trio.fail_after(30):
        srv: Server = await make_server(internal_config(nextcloud))
        r = await post(srv, ROOM, REQUEST)
        assert r.status_code == 404
        assert r.json() == {"type": "dialout", "dialout": {"error": {
            "code": "no_client_available",
            "message": "No available client found to trigger dialout."}}}
        # an internal client without start-dialout is no candidate
        c = await srv.client()
        await internal_hello(c)
        assert (await post(srv, ROOM, REQUEST)).status_code == 404
        for number, code in (("0170123", "invalid_number"), ("", "number_missing"),
                             ("+4", "invalid_number")):
            r = await post(srv, ROOM, {"type": "dialout", "dialout": {"number": number}})
            assert r.status_code == 400 and r.json()["dialout"]["error"]["code"] == code
        r = await post(srv, "abc", REQUEST)
        assert r.status_code == 400
        assert r.json() == {"type": "dialout", "dialout": {"error": {
            "code": "invalid_roomid", "message": "The room id must be numeric."}}}
        r = await post(srv, ROOM, {"type": "dialout", "dialout": {"number": 5}})
        assert r.status_code == 400 and r.text == "Could not read body\n"
        await c.nothing(0.1)  # nobody was asked


async def test_a_bridge_that_ends_its_session_instead_of_answering(
    make_server: Any, nextcloud: Any
) -> None:
    with trio.fail_after(30):
        srv, _alice, bridge = await _setup(make_server, nextcloud)
        results: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_dial, srv, results)
            await _request_to(bridge)
            await bridge.request({"type": "bye", "bye": {}})
        [r] = results
        assert r.status_code == 502
        assert r.json() == {"type": "dialout", "dialout": {"error": {
            "code": "error_notify", "message": "No dialout response received."}}}


async def test_serverinfo_lists_the_dialout_clients(make_server: Any, nextcloud: Any) -> None:
    with trio.fail_after(30):
        srv, _alice, bridge = await _setup(make_server, nextcloud)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as c:
            r = await c.get("/api/v1/serverinfo")
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json; charset=utf-8"
            info = r.json()
            assert "dialout" in info["features"] and "switchto" in info["features"]
            [entry] = info["dialout"]
            entry.pop("useragent", None)
            entry.pop("version", None)
            assert entry == {"sessionid": bridge.session_id, "connected": True,
                             "address": "127.0.0.1", "features": ["start-dialout"]}
            assert info["nats"] == {"urls": ["nats://loopback"], "connected": True,
                                    "serverurl": "nats://loopback"}
            await bridge.join(ROOM)  # no candidate any more
            assert "dialout" not in (await c.get("/api/v1/serverinfo")).json()
