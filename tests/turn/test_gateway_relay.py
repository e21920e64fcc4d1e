"""The TURN-over-UDP gateway end to end on loopback: relay.app.run with real sockets.

Allocate, permissions, channels and both data paths to a UDP echo peer; Refresh and
deletion; the relay port range running out and coming back; shutdown releasing every
socket; Allocate retransmissions; IPv6 and dual-stack allocations.
"""

from __future__ import annotations

import os

import pytest
import trio

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.turnclient import TurnError
from relay.stun import (
    AdditionalAddressFamily,
    ErrorCode,
    Lifetime,
    Message,
    MessageClass,
    Method,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    Username,
    XorRelayedAddress,
    long_term_key,
)
from tests.turn.gateway_harness import (
    PASSWORD,
    USER,
    binding,
    client,
    config,
    drain,
    listener_address,
    open_fds,
    roundtrip,
    running,
    udp_sink,
    until,
)

V4, V6 = 1, 2


async def test_allocate_channel_and_indications_relay_both_ways() -> None:
    cfg = config(turn={"default_lifetime": 60, "max_lifetime": 300})
    lo, hi = cfg.turn.min_port, cfg.turn.max_port
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with client(rt) as c:
                await c.allocate()
                assert c.relayed is not None
                assert c.relayed[0] == "127.0.0.1" and lo <= c.relayed[1] <= hi
                assert c.mapped == c.local_address
                assert c.lifetime == 60
                assert rt.stats.allocations_active == 1

                # Send indication out, Data indication back from the peer's address.
                await c.create_permission(peer)
                src = await roundtrip(c, lambda: c.send_indication(peer, b"by-indication"),
                                      "data", b"by-indication")
                assert src == peer

                # ChannelData both ways; once bound, the peer's data comes as ChannelData.
                await c.channel_bind(0x4000, peer)
                payload = bytes(range(256)) * 4
                number = await roundtrip(c, lambda: c.send_channel(0x4000, payload),
                                         "channel", payload)
                assert number == 0x4000
                # An odd length (no padding on UDP) and an empty payload.
                assert await roundtrip(c, lambda: c.send_channel(0x4000, b"odd"),
                                       "channel", b"odd") == 0x4000
                assert await roundtrip(c, lambda: c.send_channel(0x4000, b""),
                                       "channel", b"") == 0x4000
                cluster = rt.stats.clusters["peers"].traffic
                assert cluster.tx_packets >= 4 and cluster.rx_packets >= 4
                assert rt.stats.permissions_active == 1 and rt.stats.channels_active == 1

                # Refresh is clamped to max(default, min(requested, max)).
                await c.refresh(120)
                assert c.lifetime == 120
                await c.refresh(10)
                assert c.lifetime == 60
                await c.refresh(100_000)
                assert c.lifetime == 300

                # Refresh(0) deletes: counters settle, nothing is relayed any more.
                await c.refresh(0)
                assert c.lifetime == 0
                assert rt.stats.allocations_active == 0
                assert rt.stats.permissions_active == 0 and rt.stats.channels_active == 0
                dropped = rt.stats.drops["no_allocation"]
                await c.send_channel(0x4000, b"after delete")
                await c.send_indication(peer, b"after delete")
                await binding(c)
                assert rt.stats.drops["no_allocation"] == dropped + 2
                with pytest.raises(TurnError) as err:
                    await c.create_permission(peer)
                assert err.value.code == 437
            nursery.cancel_scope.cancel()


async def test_port_range_exhausted_gives_508_and_refresh_zero_frees_a_port() -> None:
    cfg = config(ports=4)
    lo, hi = cfg.turn.min_port, cfg.turn.max_port
    with trio.fail_after(20):
        async with running(cfg) as rt:
            clients = [client(rt) for _ in range(5)]
            for c in clients:
                await c.__aenter__()
            try:
                for c in clients[:4]:
                    await c.allocate()
                ports = {c.relayed[1] for c in clients[:4] if c.relayed}
                assert ports == set(range(lo, hi + 1))
                with pytest.raises(TurnError) as err:
                    await clients[4].allocate()
                assert err.value.code == 508
                assert rt.stats.quota_rejections["ports"] == 1
                assert rt.stats.allocations_active == 4

                freed = clients[1].relayed
                await clients[1].refresh(0)
                await clients[4].allocate()
                assert clients[4].relayed == freed
                assert rt.stats.allocations_active == 4
            finally:
                for c in clients:
                    c.close()


async def test_expired_allocation_releases_its_port() -> None:
    cfg = config(ports=1, turn={"default_lifetime": 1, "max_lifetime": 1})
    with trio.fail_after(20):
        async with running(cfg) as rt:
            async with client(rt) as a, client(rt) as b:
                await a.allocate()
                with pytest.raises(TurnError) as err:
                    await b.allocate()
                assert err.value.code == 508
                # The sweeper deletes the allocation once its lifetime has passed.
                await until(lambda: rt.stats.allocations_active == 0, "the allocation to expire")
                await b.allocate()
                assert b.relayed == a.relayed


async def test_cancelling_the_app_releases_every_socket() -> None:
    cfg = config(ports=4, admin={"metrics_endpoint": "http://127.0.0.1:0/metrics",
                                 "healthcheck_endpoint": "http://127.0.0.1:0"})
    lo, hi = cfg.turn.min_port, cfg.turn.max_port
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            peer = await outer.start(serve_udp_echo, "127.0.0.1", 0)
            before = open_fds()
            async with running(cfg) as rt:
                host, port = listener_address(rt)
                clients = [client(rt) for _ in range(2)]
                for c in clients:
                    await c.__aenter__()
                for i, c in enumerate(clients):
                    await c.allocate(additional_family=V6)
                    await c.channel_bind(0x4000 + i, peer)
                    await roundtrip(c, lambda c=c, i=i: c.send_channel(0x4000 + i, b"x"),
                                    "channel", b"x")
                # Data in flight while the app is cancelled.
                for c in clients:
                    for _ in range(20):
                        await c.send_channel(0x4000 + clients.index(c), b"in flight")
                assert rt.stats.allocations_active == 2
            for c in clients:
                c.close()
            assert rt.stats.allocations_active == 0
            assert not rt.health.listeners["udp"].bound
            assert open_fds() == before
            # The listener and every relay port can be bound again.
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
                await s.bind((host, port))
            for p in range(lo, hi + 1):
                for fam, ip in ((trio.socket.AF_INET, "127.0.0.1"),
                                (trio.socket.AF_INET6, "::1")):
                    with trio.socket.socket(fam, trio.socket.SOCK_DGRAM) as s:
                        await s.bind((ip, p))
            outer.cancel_scope.cancel()


def _allocate_bytes(tid: bytes, nonce: str, realm: str) -> bytes:
    key = long_term_key(USER, realm, PASSWORD)
    msg = Message(method=Method.ALLOCATE, cls=MessageClass.REQUEST, transaction_id=tid,
                  attributes=[RequestedTransport(17), Username(USER), Realm(realm),
                              Nonce(nonce)])
    return msg.encode(key=key, integrity="sha1", fingerprint=True)


async def test_allocate_retransmission_gets_identical_bytes_new_txid_gets_437() -> None:
    cfg = config()
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            tid = os.urandom(12)
            first = await c.raw_request(
                Message(method=Method.ALLOCATE, cls=MessageClass.REQUEST, transaction_id=tid,
                        attributes=[RequestedTransport(17)]).encode(), tid)
            err = first.get(ErrorCode)
            assert err is not None and err.code == 401
            realm, nonce = first.get(Realm), first.get(Nonce)
            assert realm is not None and nonce is not None

            tid = os.urandom(12)
            request = _allocate_bytes(tid, nonce.value, realm.value)
            a = await c.raw_request(request, tid)
            b = await c.raw_request(request, tid)
            assert a.cls == MessageClass.SUCCESS
            assert a.raw == b.raw
            assert rt.stats.allocations_active == 1 and rt.stats.allocations_total == 1

            tid2 = os.urandom(12)
            other = await c.raw_request(_allocate_bytes(tid2, nonce.value, realm.value), tid2)
            assert other.cls == MessageClass.ERROR
            err = other.get(ErrorCode)
            assert err is not None and err.code == 437
            assert rt.stats.allocations_total == 1


async def test_requests_and_data_without_an_allocation() -> None:
    cfg = config()
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            for call in (lambda: c.refresh(600), lambda: c.refresh(0),
                         lambda: c.create_permission(("127.0.0.1", 9)),
                         lambda: c.channel_bind(0x4000, ("127.0.0.1", 9))):
                with pytest.raises(TurnError) as err:
                    await call()
                assert err.value.code == 437
            await c.send_channel(0x4000, b"nobody")
            await c.send_indication(("127.0.0.1", 9), b"nobody")
            await binding(c)
            assert rt.stats.drops["no_allocation"] == 2
            assert rt.stats.requests[("refresh", "437")] == 2
            assert rt.stats.requests[("create_permission", "437")] == 1
            assert rt.stats.requests[("channel_bind", "437")] == 1


async def test_ipv6_listener_and_ipv6_relay_to_an_ipv6_peer() -> None:
    cfg = config(
        listeners=[{"name": "udp6", "protocol": "TURN-UDP", "address": "::1", "port": 0,
                    "routes": ["peers"]}],
        clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["::1/128"]}],
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "::1", 0)
            async with client(rt, "udp6") as c:
                assert c.local_address[0] == "::1"
                assert await c.binding() == c.local_address
                resp = await c.allocate(family=V6)
                assert c.relayed is not None and c.relayed[0] == "::1"
                assert len(resp.get_all(XorRelayedAddress)) == 1
                assert c.mapped == c.local_address

                await c.create_permission(peer)
                assert await roundtrip(c, lambda: c.send_indication(peer, b"v6 indication"),
                                       "data", b"v6 indication") == peer
                await c.channel_bind(0x4ABC, peer)
                assert await roundtrip(c, lambda: c.send_channel(0x4ABC, b"v6 channel"),
                                       "channel", b"v6 channel") == 0x4ABC

                # An IPv4 peer on an IPv6-only allocation: 443 Peer Address Family Mismatch.
                with pytest.raises(TurnError) as err:
                    await c.create_permission(("127.0.0.1", peer[1]))
                assert err.value.code == 443
                await c.refresh(0)
            nursery.cancel_scope.cancel()


async def test_dual_stack_allocation_with_additional_address_family() -> None:
    cfg = config(clusters=[{"name": "peers", "type": "STATIC",
                            "endpoints": ["127.0.0.1/32", "::1/128"]}])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer4 = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            peer6 = await nursery.start(serve_udp_echo, "::1", 0)
            async with client(rt) as c:
                resp = await c.allocate(additional_family=V6)
                relayed = [(a.ip, a.port) for a in resp.get_all(XorRelayedAddress)]
                assert [ip for ip, _ in relayed] == ["127.0.0.1", "::1"]
                lt = resp.get(Lifetime)
                assert lt is not None and lt.seconds == 600

                await c.channel_bind(0x4001, peer4)
                await c.channel_bind(0x4002, peer6)
                assert await roundtrip(c, lambda: c.send_channel(0x4001, b"four"),
                                       "channel", b"four") == 0x4001
                assert await roundtrip(c, lambda: c.send_channel(0x4002, b"six"),
                                       "channel", b"six") == 0x4002
                await c.create_permission(peer6)
                # A Send indication to the v6 peer: its echo comes back on channel 0x4002,
                # the channel bound to that peer.
                assert await roundtrip(c, lambda: c.send_indication(peer6, b"six via send"),
                                       "channel", b"six via send") == 0x4002

                # The peer sees the IPv6 relayed address as the source.
                sink = udp_sink("::1")
                with sink:
                    sink_addr = sink.getsockname()[:2]
                    await c.create_permission(sink_addr)
                    await c.send_indication(sink_addr, b"who is it")
                    await binding(c)
                    with trio.move_on_after(2):
                        await trio.lowlevel.wait_readable(sink)
                    data, src = sink.recvfrom(2048)
                    assert data == b"who is it"
                    assert src[:2] == relayed[1]
                    assert drain(sink) == []
                await c.refresh(0)

            async with client(rt) as c:
                # REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together, or ADDITIONAL = IPv4: 400.
                for extra in ([RequestedAddressFamily(V4), AdditionalAddressFamily(V6)],
                              [AdditionalAddressFamily(V4)]):
                    with pytest.raises(TurnError) as err:
                        await c.allocate(extra=extra)
                    assert err.value.code == 400
                assert rt.stats.allocations_active == 0
            nursery.cancel_scope.cancel()
