"""The TURN-over-UDP gateway end to end on loopback: relay.app.run with real sockets.

Allocate, permissions, channels and both data paths to a UDP echo peer; Refresh and
deletion; the relay port range running out and coming back; shutdown releasing every
socket; Allocate retransmissions; IPv6 and dual-stack allocations.
"""

from __future__ import annotations

import errno
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
    ReservationToken,
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
    deliver,
    drain,
    listener_address,
    needs_ipv6,
    open_fds,
    roundtrip,
    running,
    udp_sink,
    until,
)

# every test here on the batched and on the plain datagram path
pytestmark = pytest.mark.usefixtures("datagram_io")

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


@needs_ipv6
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


@needs_ipv6
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


@needs_ipv6
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


async def test_expired_permission_and_channel_stop_the_data_plane() -> None:
    cfg = config(clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.0/8"]}],
                 turn={"permission_lifetime": 1, "channel_lifetime": 1})
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            await c.allocate()
            assert c.relayed is not None
            peer = udp_sink("127.0.0.2")
            with peer:
                where = peer.getsockname()
                await c.channel_bind(0x4000, where)
                await c.send_channel(0x4000, b"bound")
                await binding(c)
                assert drain(peer) == [b"bound"]
                # The sweeper ends the channel and then the permission.
                await until(lambda: rt.stats.channels_active == 0
                            and rt.stats.permissions_active == 0, "both to expire")
                drops = dict(rt.stats.drops)
                await c.send_channel(0x4000, b"expired channel")
                await c.send_indication(where, b"expired permission")
                await binding(c)
                assert drain(peer) == []
                assert rt.stats.drops["unbound_channel"] == drops["unbound_channel"] + 1
                assert rt.stats.drops["no_permission"] == drops["no_permission"] + 1
                peer.sendto(b"too late", c.relayed)
                await until(lambda: rt.stats.drops["no_permission"] == drops["no_permission"] + 2,
                            "the peer's datagram to be dropped")
                await binding(c)
                assert not c._pending
                # The allocation itself lives on: a new permission relays again.
                await c.create_permission(where)
                await c.send_indication(where, b"again")
                await binding(c)
                assert drain(peer) == [b"again"]


async def test_deleting_an_allocation_while_its_peer_floods_it() -> None:
    cfg = config(clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.0/8"]}])
    with trio.fail_after(20):
        async with running(cfg) as rt:
            flooder = udp_sink("127.0.0.2")
            with flooder:
                for round_ in range(5):
                    async with client(rt) as c:
                        await c.allocate()
                        assert c.relayed is not None
                        await c.channel_bind(0x4000, flooder.getsockname())
                        # The peer sends while the client deletes; the relay socket closes
                        # with datagrams queued and its reader waiting on it.
                        for i in range(200):
                            try:
                                flooder.sendto(b"flood %d" % i, c.relayed)
                            except BlockingIOError:
                                pass
                        await c.refresh(0)
                        for _ in range(50):
                            try:
                                flooder.sendto(b"after", c.relayed)
                            except BlockingIOError:
                                pass
                        await trio.lowlevel.checkpoint()
                    assert rt.stats.allocations_active == 0, round_
            # Still serving.
            async with client(rt) as c:
                await c.allocate()
                assert rt.stats.allocations_active == 1


async def test_peer_datagram_too_large_for_a_data_indication_is_counted() -> None:
    cfg = config(clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.0/8"]}])
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            await c.allocate()
            assert c.relayed is not None
            peer = udp_sink("127.0.0.2")
            with peer:
                await c.create_permission(peer.getsockname())
                # 65507 bytes: the largest IPv4 UDP payload; plus the Data indication's
                # header and attributes it cannot be sent to the client.
                await deliver(lambda: peer.sendto(bytes(65507), c.relayed),
                              lambda: rt.stats.drops["too_large"] >= 1, "a too_large drop")

                async def from_peer(payload: bytes) -> tuple[str, object, bytes]:
                    for _ in range(5):
                        peer.sendto(payload, c.relayed)
                        try:
                            return await c.recv(timeout=1)
                        except trio.TooSlowError:
                            continue
                    raise AssertionError(f"{len(payload)} bytes never came through")

                # 65000 bytes fit, as a Data indication and as ChannelData.
                kind, _src, data = await from_peer(b"\x01" * 65000)
                assert (kind, len(data)) == ("data", 65000)
                await c.channel_bind(0x4000, peer.getsockname())
                kind, number, data = await from_peer(b"\x02" * 65503)
                assert (kind, number, len(data)) == ("channel", 0x4000, 65503)
                assert rt.stats.drops["too_large"] == 1
                # And a 60000-byte Send indication goes out whole.
                await deliver(lambda: c.send_indication(peer.getsockname(), b"\x03" * 60000),
                              lambda: rt.stats.clusters["peers"].traffic.tx_packets >= 1,
                              "the Send indication")
                await binding(c)
                assert {len(d) for d in drain(peer)} == {60000}


async def test_each_listener_relays_only_to_its_own_routes() -> None:
    cfg = config(
        listeners=[
            {"name": "udp-a", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
             "routes": ["local"]},
            {"name": "udp-b", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
             "routes": ["remote"]},
        ],
        clusters=[{"name": "local", "type": "STATIC", "endpoints": ["127.0.0.1/32"]},
                  {"name": "remote", "type": "STATIC", "endpoints": ["192.0.2.0/24"]}],
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with client(rt, "udp-a") as a, client(rt, "udp-b") as b:
                await a.allocate()
                await b.allocate()
                await a.channel_bind(0x4000, peer)
                assert await roundtrip(a, lambda: a.send_channel(0x4000, b"a"), "channel",
                                       b"a") == 0x4000
                with pytest.raises(TurnError) as err:
                    await b.channel_bind(0x4000, peer)
                assert err.value.code == 403
                await b.create_permission(("192.0.2.10", 5000))
                with pytest.raises(TurnError) as err:
                    await a.create_permission(("192.0.2.10", 5000))
                assert err.value.code == 403
                st = rt.stats
                assert st.listeners["udp-a"].connections == 1
                assert st.listeners["udp-b"].connections == 1
                assert st.clusters["local"].connections == 1
                assert st.clusters["remote"].connections == 1
                assert st.peer_refusals["loopback"] == 1 and st.peer_refusals["no_route"] == 1
            nursery.cancel_scope.cancel()


async def test_even_port_reservation_is_redeemed_and_released_at_shutdown() -> None:
    cfg = config(ports=8)
    lo, hi = cfg.turn.min_port, cfg.turn.max_port
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as a, client(rt) as b:
            resp = await a.allocate(even_port=True)
            assert a.relayed is not None and a.relayed[1] % 2 == 0
            token = resp.get(ReservationToken)
            assert token is not None
            await b.allocate(extra=[ReservationToken(token.token)])
            assert b.relayed == ("127.0.0.1", a.relayed[1] + 1)
            # A token is good once.
            async with client(rt) as c:
                with pytest.raises(TurnError) as err:
                    await c.allocate(extra=[ReservationToken(token.token)])
                assert err.value.code == 508
            # An unredeemed reservation holds its port until shutdown.
            async with client(rt) as d:
                resp = await d.allocate(even_port=True)
                assert resp.get(ReservationToken) is not None
    for p in range(lo, hi + 1):
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
            await s.bind(("127.0.0.1", p))


async def test_a_failed_start_releases_what_it_had_bound() -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as taken:
        await taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        cfg = config(
            listeners=[
                {"name": "first", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
                 "routes": ["peers"]},
                {"name": "second", "protocol": "TURN-UDP", "address": "127.0.0.1",
                 "port": port, "routes": ["peers"]},
            ],
            admin={"metrics_endpoint": "http://127.0.0.1:0/metrics",
                   "healthcheck_endpoint": "http://127.0.0.1:0"},
        )
        before = open_fds()
        errors: list[str] = []
        with trio.fail_after(20):
            try:
                async with running(cfg):
                    raise AssertionError("relay started with a listener port in use")
            except* OSError as group:
                errors = [str(e) for e in _leaves(group)]
        assert errors == [f"[Errno {errno.EADDRINUSE}] listeners[1].port (listener second): "
                          f"cannot bind 127.0.0.1:{port}/udp: {os.strerror(errno.EADDRINUSE)}"]
        assert open_fds() == before


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
