"""The benchmark TURN client against real servers on loopback: coturn (if installed) and relay.

Covers the whole client API the load generators and integration tests rely on: Binding,
Allocate (401 dance), CreatePermission + Send/Data indications, ChannelBind + ChannelData,
Refresh, delete, error responses, raw requests; all relayed to a UDP echo peer.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest
import trio

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.servers import (
    PASSWORD,
    USERNAME,
    ServerProcess,
    coturn_available,
    run_coturn,
    run_relay,
)
from benchmarks.turnclient import TurnClient, TurnError
from relay.stun import (
    ErrorCode,
    Lifetime,
    Message,
    MessageClass,
    Method,
    RequestedTransport,
    XorMappedAddress,
)

RTO = 0.1


def _relay_gateway_present() -> bool:
    return importlib.util.find_spec("relay.net.gateway") is not None


@pytest.fixture(scope="module", params=["coturn", "relay"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    if request.param == "coturn":
        if not coturn_available():
            pytest.skip("coturn's turnserver is not installed (apt install coturn)")
        with run_coturn() as srv:
            yield srv
    else:
        if not _relay_gateway_present():
            pytest.skip("relay's TURN gateway (relay.net.gateway) is not in this tree yet")
        with run_relay() as srv:
            yield srv


async def _echo_roundtrip(client: TurnClient, send: object, expect_kind: str,
                          tag: bytes) -> tuple[str, object, bytes]:
    """Send via ``send`` until the echoed ``tag`` comes back (UDP: retry a few times)."""
    for _ in range(5):
        await send()  # type: ignore[operator]
        with trio.move_on_after(0.5):
            while True:
                kind, meta, payload = await client.recv(timeout=0.5)
                if kind == expect_kind and payload == tag:
                    return kind, meta, payload
    raise AssertionError(f"no {expect_kind} echo of {tag!r}")


async def test_binding_reports_our_address(server: ServerProcess) -> None:
    with trio.fail_after(10):
        async with TurnClient(server.address, USERNAME, PASSWORD, rto=RTO) as client:
            assert await client.binding() == client.local_address


async def test_allocate_relay_both_ways_refresh_delete(server: ServerProcess) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with TurnClient(server.address, USERNAME, PASSWORD, rto=RTO) as client:
                resp = await client.allocate()
                assert resp.cls == MessageClass.SUCCESS
                assert client.relayed is not None and client.relayed[0] == "127.0.0.1"
                assert client.relayed_all[0] == client.relayed
                assert 0 < client.relayed[1] < 65536
                assert client.mapped == client.local_address
                assert client.lifetime is not None and client.lifetime > 0
                assert client.realm == "bench" and client.nonce

                # Send indication out, Data indication back, from the peer's address.
                await client.create_permission(peer)
                _kind, src, _payload = await _echo_roundtrip(
                    client, lambda: client.send_indication(peer, b"via-send"), "data",
                    b"via-send")
                assert src == peer

                # ChannelData both ways.
                await client.channel_bind(0x4001, peer)
                _kind, channel, _payload = await _echo_roundtrip(
                    client, lambda: client.send_channel(0x4001, b"via-channel" * 10),
                    "channel", b"via-channel" * 10)
                assert channel == 0x4001

                refreshed = await client.refresh(120)
                assert refreshed.get(Lifetime) is not None
                assert client.lifetime is not None and client.lifetime > 0

                deleted = await client.refresh(0)
                assert deleted.cls == MessageClass.SUCCESS
                assert client.lifetime == 0
                # Once deleted, nothing is relayed any more (coturn frees the allocation
                # on its next timer tick, up to about a second later).
                stopped = False
                for _ in range(15):
                    await client.send_channel(0x4001, b"after-delete")
                    try:
                        await client.recv(timeout=0.4)
                    except trio.TooSlowError:
                        stopped = True
                        break
                    await trio.sleep(0.2)
                assert stopped, "relaying continued after the allocation was deleted"
            nursery.cancel_scope.cancel()


async def test_error_responses_raise_turn_error(server: ServerProcess) -> None:
    with trio.fail_after(10):
        async with TurnClient(server.address, USERNAME, PASSWORD, rto=RTO) as client:
            # No allocation on this 5-tuple yet: RFC 8656 says 437 Allocation Mismatch
            # (coturn answers 400).
            with pytest.raises(TurnError) as err:
                await client.create_permission(("127.0.0.1", 9))
            assert err.value.code == (437 if server.name == "relay" else err.value.code)
            assert err.value.code in (400, 437)
            assert err.value.response.cls == MessageClass.ERROR
        async with TurnClient(server.address, USERNAME, "wrong-password", rto=RTO) as bad:
            with pytest.raises(TurnError) as err:
                await bad.allocate()
            assert err.value.code == 401


async def test_raw_request_returns_error_responses(server: ServerProcess) -> None:
    with trio.fail_after(10):
        async with TurnClient(server.address, USERNAME, PASSWORD, rto=RTO) as client:
            tid = os.urandom(12)
            raw = Message(method=Method.ALLOCATE, cls=MessageClass.REQUEST,
                          transaction_id=tid,
                          attributes=[RequestedTransport(17)]).encode(fingerprint=True)
            resp = await client.raw_request(raw, tid)
            assert resp.transaction_id == tid
            assert resp.cls == MessageClass.ERROR
            err = resp.get(ErrorCode)
            assert err is not None and err.code == 401

            tid = os.urandom(12)
            raw = Message(method=Method.BINDING, cls=MessageClass.REQUEST,
                          transaction_id=tid).encode()
            resp = await client.raw_request(raw, tid)
            assert resp.cls == MessageClass.SUCCESS
            xma = resp.get(XorMappedAddress)
            assert xma is not None and (xma.ip, xma.port) == client.local_address


async def test_sha256_integrity_client_option_is_validated() -> None:
    with pytest.raises(ValueError):
        TurnClient(("127.0.0.1", 3478), "u", "p", integrity="md5")


@pytest.mark.skipif(not coturn_available(), reason="coturn's turnserver is not installed")
async def test_ipv6_loopback_allocation_and_channel() -> None:
    with run_coturn("::1") as srv:
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                peer = await nursery.start(serve_udp_echo, "::1", 0)
                async with TurnClient(srv.address, USERNAME, PASSWORD, rto=RTO) as client:
                    assert client.local_address[0] == "::1"
                    await client.allocate(family=2)
                    assert client.relayed is not None and client.relayed[0] == "::1"
                    await client.channel_bind(0x4000, peer)
                    _kind, channel, _payload = await _echo_roundtrip(
                        client, lambda: client.send_channel(0x4000, b"over-v6"), "channel",
                        b"over-v6")
                    assert channel == 0x4000
                nursery.cancel_scope.cancel()
