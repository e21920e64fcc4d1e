"""Bad input and abuse (TURN reference §8) against the running gateway on loopback.

Peer policy (SSRF forms of loopback and metadata addresses, relay's own ports), data from
peers without a permission, floods of malformed datagrams, the 401 rate limit, quotas,
LIFETIME extremes, DONT-FRAGMENT, and the counters that show all of it.
"""

from __future__ import annotations

import os
import random
import socket
import time
from contextlib import suppress

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.turnclient import TurnClient, TurnError
from relay.stun import (
    AdditionalAddressFamily,
    Attribute,
    ChannelNumber,
    Data,
    DontFragment,
    ErrorCode,
    EvenPort,
    Lifetime,
    Message,
    MessageClass,
    Method,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    UnknownAttribute,
    UnknownAttributes,
    Username,
    XorPeerAddress,
    encode_channel_data,
)
from tests.turn.gateway_harness import (
    binding,
    binding_request,
    client,
    config,
    deliver,
    drain,
    listener_address,
    needs_ipv6,
    roundtrip,
    running,
    udp_sink,
    until,
)

# every test here on the batched and on the plain datagram path
pytestmark = pytest.mark.usefixtures("datagram_io")

V6 = 2
BROAD = [{"name": "world", "type": "STATIC", "endpoints": ["0.0.0.0/0", "::/0"]}]
BROAD_ROUTES = [{"name": "udp", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 0,
                 "routes": ["world"]}]

# Loopback, unspecified and cloud-metadata targets in every spelling the kernel would reach.
FORBIDDEN = [
    "127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1",
    "2002:7f00:1::", "0.0.0.0", "::", "169.254.169.254", "::ffff:169.254.169.254",
    "fe80::1", "224.0.0.1", "255.255.255.255",
]


@needs_ipv6
async def test_loopback_and_metadata_in_every_spelling_are_refused_with_a_broad_cluster(
) -> None:
    cfg = config(listeners=BROAD_ROUTES, clusters=BROAD)
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            await c.allocate(additional_family=V6)
            assert len(c.relayed_all) == 2
            sinks = [udp_sink("127.0.0.1"), udp_sink("::1")]
            try:
                port = sinks[0].getsockname()[1]
                for ip in FORBIDDEN:
                    with pytest.raises(TurnError) as err:
                        await c.create_permission((ip, port))
                    assert err.value.code == 403, ip
                    with pytest.raises(TurnError) as err:
                        await c.channel_bind(0x4000, (ip, port))
                    assert err.value.code == 403, ip
                    # Without a permission a Send indication is dropped.
                    await c.send_indication((ip, port), b"ssrf")
                # Every sink port, in every spelling.
                for sink in sinks:
                    sp = sink.getsockname()[1]
                    for ip in ("127.0.0.1", "::ffff:127.0.0.1", "::127.0.0.1", "0.0.0.0",
                               "::1", "::"):
                        await c.send_indication((ip, sp), b"ssrf")
                await binding(c)
                assert [drain(s) for s in sinks] == [[], []]
            finally:
                for s in sinks:
                    s.close()
            st = rt.stats
            assert st.permissions_active == 0 and st.channels_active == 0
            assert st.requests[("create_permission", "403")] == len(FORBIDDEN)
            assert st.requests[("channel_bind", "403")] == len(FORBIDDEN)
            assert st.drops["no_permission"] == len(FORBIDDEN) + 12
            refused = st.peer_refusals
            assert refused["loopback"] == 2 * 7 and refused["unspecified"] == 2 * 2
            assert refused["link_local"] == 2 * 3
            assert refused["multicast"] == 2 and refused["broadcast"] == 2


async def test_relays_own_ports_are_refused_even_when_loopback_is_allowed() -> None:
    cfg = config(
        clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1/32"]}],
        admin={"metrics_endpoint": "http://127.0.0.1:0/metrics",
               "healthcheck_endpoint": "http://127.0.0.1:0"},
    )
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            own = {"listener": listener_address(rt)[1],
                   "metrics": rt.http["metrics"][1],
                   "health": rt.http["health"][1]}
            await c.allocate()
            # A permission is per IP: loopback is allowed by the cluster.
            await c.create_permission(("127.0.0.1", own["listener"]))
            for what, port in own.items():
                with pytest.raises(TurnError) as err:
                    await c.channel_bind(0x4000, ("127.0.0.1", port))
                assert err.value.code == 403, what
            assert rt.stats.peer_refusals["own_address"] == 3

            # Send indications to those ports are dropped; the listener gets nothing from
            # the relay socket (it would count a datagram without an allocation).
            # The HTTP ports are TCP: UDP sockets on the same numbers stand in for anything
            # else listening there, and see whether the relay reaches them.
            stand_ins = []
            for what in ("metrics", "health"):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", own[what]))
                s.setblocking(False)
                stand_ins.append(s)
            try:
                listener_rx = rt.stats.listeners["udp"].traffic.rx_packets
                no_alloc = rt.stats.drops["no_allocation"]
                for port in own.values():
                    await c.send_indication(("127.0.0.1", port), b"turn-in-turn")
                await binding(c)
                assert rt.stats.drops["peer_not_allowed"] == 3
                assert rt.stats.drops["no_allocation"] == no_alloc
                # Our three indications and the Binding request, nothing else.
                assert rt.stats.listeners["udp"].traffic.rx_packets == listener_rx + 4
                assert [drain(s) for s in stand_ins] == [[], []]
                assert rt.stats.clusters["peers"].traffic.tx_packets == 0

                # Nor does anything sent from those ports reach the client.
                for s in stand_ins:
                    s.sendto(b"from an own port", c.relayed)
                await until(lambda: rt.stats.drops["peer_not_allowed"] == 5,
                            "both datagrams to be refused")
                await binding(c)
                assert not c._pending
                assert rt.stats.clusters["peers"].traffic.rx_packets == 0
            finally:
                for s in stand_ins:
                    s.close()


async def test_data_from_a_peer_without_permission_is_dropped_and_counted() -> None:
    cfg = config(clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.0/8"]}])
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            await c.allocate()
            assert c.relayed is not None
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with stranger:
                stranger.bind(("127.0.0.2", 0))
                for i in range(5):
                    stranger.sendto(b"unsolicited %d" % i, c.relayed)
                await until(lambda: rt.stats.drops["no_permission"] == 5, "5 dropped datagrams")
                await binding(c)
                assert not c._pending  # nothing was relayed to the client
                assert rt.stats.clusters["peers"].traffic.rx_packets == 0

                # A permission for another IP does not let this one in either.
                await c.create_permission(("127.0.0.3", 9))
                stranger.sendto(b"still not", c.relayed)
                await until(lambda: rt.stats.drops["no_permission"] == 6, "a 6th drop")

                # Once permitted (any port of that IP), its data arrives as Data indications.
                await c.create_permission(("127.0.0.2", 1))
                stranger.sendto(b"welcome", c.relayed)
                kind, src, data = await c.recv(timeout=2)
                assert (kind, src, data) == ("data", stranger.getsockname(), b"welcome")
                assert rt.stats.drops["no_permission"] == 6


async def test_flood_of_malformed_datagrams_is_dropped_and_binding_still_answered() -> None:
    cfg = config()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with client(rt) as c, client(rt) as bystander:
                await c.allocate()
                await c.channel_bind(0x4000, peer)
                drops = rt.stats.drops
                before = dict(drops)
                req, _ = binding_request()
                cookie = req[4:8]

                async def batch(datagrams: list[bytes]) -> None:
                    for d in datagrams:
                        await c.send_raw(d)
                    await binding(c)  # answered after all of them

                # Random bytes whose first byte is neither STUN (0x00-0x01) nor ChannelData.
                garbage = [bytes([0x80 | r[0]]) + r[1:] for r in
                           (os.urandom(64) for _ in range(50))]
                await batch(garbage)
                assert drops["malformed"] == before["malformed"] + 50

                truncated = [req[:n] for n in (0, 1, 4, 8, 19)]  # shorter than a header
                truncated += [b"\x00\x01\x00\x08" + cookie + os.urandom(12)]  # length past end
                truncated += [b"\x00\x01\x00\x03" + cookie + os.urandom(12) + b"abc"]  # len % 4
                truncated += [b"\x00\x01\x00\x08" + cookie + os.urandom(12)
                              + b"\x00\x06\x00\x40" + b"abcd"]  # attribute past the end
                await batch(truncated)
                assert drops["malformed"] == before["malformed"] + 50 + 8

                # Oversized datagrams (far beyond any MTU), one STUN-looking, one ChannelData.
                big = [b"\x00\x01\xff\xfc" + cookie + os.urandom(12) + bytes(65472),
                       b"\x40\x00\xff\xff" + bytes(65000)]  # length 65535 > payload
                # The STUN one is over the UDP request bound: dropped unread, as too large.
                await deliver(lambda: c.send_raw(big[0]),
                              lambda: drops["too_large"] == before["too_large"] + 1,
                              "an oversized STUN datagram")
                await deliver(lambda: c.send_raw(big[1]),
                              lambda: drops["malformed"] == before["malformed"] + 58 + 1,
                              "an oversized ChannelData datagram")
                await binding(c)
                assert drops["malformed"] == before["malformed"] + 50 + 8 + 1

                # ChannelData: unbound channel, length past the end, a header only, reserved.
                await batch([encode_channel_data(0x4001, b"unbound")] * 10)
                assert drops["unbound_channel"] == before["unbound_channel"] + 10
                await batch([b"\x40\x00\x00\x10" + b"short"] * 10 + [b"\x40\x00"] * 5
                            + [b"\x50\x00\x00\x04abcd", b"\xff\xff\x00\x04abcd"])
                assert drops["malformed"] == before["malformed"] + 59 + 10 + 5 + 2

                # From a 5-tuple without an allocation.
                for _ in range(7):
                    await bystander.send_raw(encode_channel_data(0x4000, b"nope"))
                await binding(bystander)
                assert drops["no_allocation"] == before["no_allocation"] + 7

                # The relay still works, for the client and for the bystander.
                assert await roundtrip(c, lambda: c.send_channel(0x4000, b"alive"),
                                       "channel", b"alive") == 0x4000
                assert await bystander.binding() == bystander.local_address
                await c.refresh(0)
            nursery.cancel_scope.cancel()


async def test_401_answers_are_rate_limited_per_source_ip() -> None:
    limit = 3
    cfg = config(turn={"unauthorized_ratelimit": limit, "unauthorized_burst": limit})
    with trio.fail_after(20):
        async with running(cfg) as rt:
            server = listener_address(rt)
            n = 30
            answered = 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                t0 = int(time.time())
                for _ in range(n):
                    msg = Message(method=Method.ALLOCATE, cls=MessageClass.REQUEST,
                                  transaction_id=os.urandom(12),
                                  attributes=[RequestedTransport(17)])
                    s.sendto(msg.encode(), server)
                # A Binding is never rate limited; its answer comes after all the 401s.
                req, tid = binding_request()
                s.sendto(req, server)
                while True:
                    await trio.lowlevel.wait_readable(s)
                    data = s.recv(2048)
                    if data[8:20] == tid:
                        break
                    assert data[0:2] == b"\x01\x13"  # Allocate error response
                    answered += 1
                windows = int(time.time()) - t0 + 1  # seconds (rounded up) the burst took
            assert 1 <= answered <= limit + limit * windows  # the bucket, plus its refill
            assert rt.stats.drops["ratelimited"] == n - answered
            assert rt.stats.requests[("allocate", "401")] == n

            # Another source IP has its own budget.
            async with client(rt, bind="127.0.0.2") as other:
                tid = os.urandom(12)
                resp = await other.raw_request(Message(
                    method=Method.ALLOCATE, cls=MessageClass.REQUEST, transaction_id=tid,
                    attributes=[RequestedTransport(17)]).encode(), tid)
                err = resp.get(ErrorCode)
                assert err is not None and err.code == 401


async def _open(clients: list[TurnClient]) -> None:
    for c in clients:
        await c.__aenter__()


async def test_quotas_user_total_permissions_channels() -> None:
    cfg = config(clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.0/8"]}],
                 admin={"user_quota": 2},
                 turn={"max_permissions": 2, "max_channels": 2})
    with trio.fail_after(20):
        async with running(cfg) as rt:
            cs = [client(rt) for _ in range(3)]
            await _open(cs)
            try:
                await cs[0].allocate()
                await cs[1].allocate()
                with pytest.raises(TurnError) as err:
                    await cs[2].allocate()
                assert err.value.code == 486
                assert rt.stats.quota_rejections["user"] == 1

                c = cs[0]
                await c.create_permission(("127.0.0.2", 1), ("127.0.0.3", 1))
                await c.create_permission(("127.0.0.2", 5))  # a refresh, not a new one
                with pytest.raises(TurnError) as err:
                    await c.create_permission(("127.0.0.4", 1))
                assert err.value.code == 508
                assert rt.stats.quota_rejections["permissions"] == 1
                assert rt.stats.permissions_active == 2

                d = cs[1]
                await d.channel_bind(0x4000, ("127.0.0.2", 1000))
                await d.channel_bind(0x4001, ("127.0.0.2", 1001))
                await d.channel_bind(0x4001, ("127.0.0.2", 1001))  # a refresh
                with pytest.raises(TurnError) as err:
                    await d.channel_bind(0x4002, ("127.0.0.2", 1002))
                assert err.value.code == 508
                assert rt.stats.quota_rejections["channels"] == 1
                assert rt.stats.channels_active == 2

                # Deleting an allocation gives the user's quota back.
                await cs[1].refresh(0)
                await cs[2].allocate()
            finally:
                for c in cs:
                    c.close()

    cfg = config(turn={"total_quota": 2})
    with trio.fail_after(20):
        async with running(cfg) as rt:
            cs = [client(rt) for _ in range(3)]
            await _open(cs)
            try:
                await cs[0].allocate()
                await cs[1].allocate()
                with pytest.raises(TurnError) as err:
                    await cs[2].allocate()
                assert err.value.code == 508
                assert rt.stats.quota_rejections["total"] == 1
                await cs[0].refresh(0)
                await cs[2].allocate()
                assert rt.stats.allocations_active == 2
            finally:
                for c in cs:
                    c.close()


@pytest.mark.parametrize(("requested", "granted"), [(0, 600), (1, 600), (599, 600),
                                                     (1800, 1800), (0xFFFFFFFF, 3600)])
async def test_lifetime_extremes_are_clamped(requested: int, granted: int) -> None:
    cfg = config()
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            resp = await c.allocate(lifetime=requested)
            lt = resp.get(Lifetime)
            assert lt is not None and lt.seconds == granted
            await c.refresh(requested)
            if requested == 0:  # Refresh(0) deletes
                assert c.lifetime == 0 and rt.stats.allocations_active == 0
            else:
                assert c.lifetime == granted and rt.stats.allocations_active == 1


async def test_dont_fragment_is_answered_with_420() -> None:
    cfg = config()
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            with pytest.raises(TurnError) as err:
                await c.allocate(extra=[DontFragment()])
            assert err.value.code == 420
            unknown = err.value.response.get(UnknownAttributes)
            assert unknown is not None and 0x001A in unknown.types
            assert rt.stats.allocations_active == 0
            await c.allocate()  # without it, fine


async def test_counters_on_the_metrics_endpoint_after_known_traffic() -> None:
    cfg = config(admin={"metrics_endpoint": "http://127.0.0.1:0/metrics"})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with client(rt) as c, client(rt) as stranger:
                await c.allocate()
                await c.channel_bind(0x4000, peer)
                sent = 0

                async def send() -> None:
                    nonlocal sent
                    sent += 1
                    await c.send_channel(0x4000, b"m" * 100)

                for _ in range(10):
                    await roundtrip(c, send, "channel", b"m" * 100)
                await stranger.send_raw(encode_channel_data(0x4000, b"x"))
                await c.send_raw(b"\xff" * 30)
                await binding(stranger)
                await binding(c)
                await until(lambda: rt.stats.clusters["peers"].traffic.rx_packets == sent,
                            "every echo to reach the relay")

                host, port = rt.http["metrics"]
                async with httpx.AsyncClient(trust_env=False) as http:
                    r = await http.get(f"http://{host}:{port}/metrics")
                assert r.status_code == 200
                samples = {}
                for fam in text_string_to_metric_families(r.text):
                    for s in fam.samples:
                        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

                def m(metric: str, **labels: str) -> float:
                    return samples[(metric, tuple(sorted(labels.items())))]

                assert m("stunner_allocations_active") == 1
                assert m("relay_turn_allocations_total") == 1
                assert m("relay_turn_permissions_active") == 1
                assert m("relay_turn_channels_active") == 1
                assert m("stunner_listener_connections", name="udp") == 1
                assert m("stunner_cluster_connections", name="peers") == 1
                assert m("stunner_cluster_packets_total", direction="tx", name="peers") == sent
                assert m("stunner_cluster_packets_total", direction="rx", name="peers") == sent
                assert m("stunner_cluster_bytes_total", direction="tx", name="peers") == sent * 100
                assert m("relay_turn_requests_total", method="allocate", result="401") == 1
                assert m("relay_turn_requests_total", method="allocate", result="success") == 1
                assert m("relay_turn_requests_total", method="channel_bind",
                         result="success") == 1
                # (the self-probe sends Bindings of its own)
                assert m("relay_turn_requests_total", method="binding", result="success") >= 2
                assert m("relay_turn_dropped_datagrams_total", reason="no_allocation") == 1
                assert m("relay_turn_dropped_datagrams_total", reason="malformed") == 1
                assert m("relay_turn_auth_failures_total", reason="missing_credentials") == 1
            nursery.cancel_scope.cancel()


# Attribute types a TURN server looks at (and a few it does not), for the fuzz below.
FUZZ_TYPES = (0x0001, 0x0006, 0x0008, 0x0009, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015,
              0x0016, 0x0017, 0x0018, 0x0019, 0x001A, 0x001C, 0x001D, 0x0020, 0x0022, 0x002A,
              0x8000, 0x8001, 0x8022, 0x8028, 0x7FFF, 0xC001)
FUZZ_METHODS = (Method.BINDING, Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION,
                Method.CHANNEL_BIND, Method.SEND, Method.DATA, 0x00A, 0x00B, 0xFFF)


@needs_ipv6
async def test_seeded_fuzz_of_authenticated_requests_and_mutated_datagrams() -> None:
    """Well-authenticated requests with odd attributes (so processing gets past the MAC),
    and byte-mutated copies of valid messages; the gateway keeps serving throughout."""
    rnd = random.Random(8656)
    cfg = config(clusters=[{"name": "peers", "type": "STATIC",
                            "endpoints": ["127.0.0.1/32", "::1/128"]}],
                 turn={"unauthorized_ratelimit": 0})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with client(rt) as c, client(rt) as fresh:
                await c.allocate(additional_family=V6)
                await c.channel_bind(0x4000, peer)
                assert c.key is not None and c.realm is not None and c.nonce is not None
                fresh.key, fresh.realm, fresh.nonce = c.key, c.realm, c.nonce
                auth = [Username(c.username), Realm(c.realm), Nonce(c.nonce)]
                valid = [c.send_indication_bytes(peer, b"hello"),
                         encode_channel_data(0x4000, b"abcdef")]
                for _ in range(600):
                    sender = rnd.choice((c, fresh))
                    if rnd.random() < 0.6:
                        attrs: list[Attribute] = []
                        for _ in range(rnd.randrange(5)):
                            attrs.append(rnd.choice((
                                RequestedTransport(17), XorPeerAddress("127.0.0.1", peer[1]),
                                XorPeerAddress("::1", rnd.randrange(65536)),
                                ChannelNumber(0x4000 + rnd.randrange(3)),
                                Lifetime(rnd.choice((0, 1, 600, 0xFFFFFFFF))),
                                RequestedAddressFamily(rnd.choice((1, 2, 3))),
                                EvenPort(rnd.random() < 0.5), AdditionalAddressFamily(2),
                                UnknownAttribute(rnd.choice(FUZZ_TYPES),
                                                 rnd.randbytes(rnd.choice((0, 1, 2, 3, 4, 8, 20)))),
                            )))
                        msg = Message(method=rnd.choice(FUZZ_METHODS),
                                      cls=MessageClass.REQUEST if rnd.random() < 0.9
                                      else MessageClass.INDICATION,
                                      transaction_id=rnd.randbytes(12), attributes=attrs + auth)
                        data = msg.encode(key=c.key, integrity=rnd.choice(("sha1", "sha256")),
                                          fingerprint=rnd.random() < 0.7)
                        valid.append(data)
                        del valid[2:-20]  # keep a few recent ones to mutate
                    else:
                        d = bytearray(rnd.choice(valid))
                        for _ in range(rnd.randrange(1, 4)):
                            d[rnd.randrange(len(d))] = rnd.randrange(256)
                        if rnd.random() < 0.3:
                            d = d[: rnd.randrange(len(d))]
                        data = bytes(d)
                    await sender.send_raw(data)
                    if rnd.random() < 0.05:
                        await binding(sender)
                await binding(c)
                await binding(fresh)
                # Allocations come and go with the fuzz (Refresh 0, Allocate); the counter
                # and the listener's table agree, and the quotas are intact.
                st = rt.stats
                assert 0 <= st.allocations_active <= 2
                assert st.listeners["udp"].connections == st.allocations_active
                with suppress(TurnError):
                    await c.refresh(0)
                with suppress(TurnError):
                    await fresh.refresh(0)
                assert st.allocations_active == 0
                assert st.permissions_active == 0 and st.channels_active == 0
            async with client(rt) as late:
                await late.allocate()
                await late.channel_bind(0x4FFF, peer)
                assert await roundtrip(late, lambda: late.send_channel(0x4FFF, b"alive"),
                                       "channel", b"alive") == 0x4FFF
            nursery.cancel_scope.cancel()


async def test_send_indication_edge_cases_and_port_zero() -> None:
    cfg = config(clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.0/8"]}])
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            await c.allocate()
            peer = udp_sink("127.0.0.2")
            with peer:
                where = peer.getsockname()
                await c.create_permission(where)
                drops = dict(rt.stats.drops)

                def indication(*attrs: Attribute) -> bytes:
                    return Message(method=Method.SEND, cls=MessageClass.INDICATION,
                                   transaction_id=os.urandom(12), attributes=list(attrs)).encode()

                # Empty DATA is allowed: an empty datagram goes to the peer.
                await c.send_raw(indication(XorPeerAddress(*where), Data(b"")))
                # Without DATA, or without XOR-PEER-ADDRESS: dropped.
                await c.send_raw(indication(XorPeerAddress(*where)))
                await c.send_raw(indication(Data(b"no peer")))
                await binding(c)
                assert drain(peer) == [b""]
                assert rt.stats.drops["malformed"] == drops["malformed"] + 2

                # Port 0 is no peer: ChannelBind 403; a Send indication is not sent.
                with pytest.raises(TurnError) as err:
                    await c.channel_bind(0x4000, (where[0], 0))
                assert err.value.code == 403
                await c.send_indication((where[0], 0), b"to port zero")
                await binding(c)
                assert drain(peer) == []
                assert rt.stats.clusters["peers"].traffic.tx_packets == 1


async def test_a_vanished_client_does_not_disturb_the_listener() -> None:
    """The client's socket closes while its peer keeps sending: relay's Data indications
    to it bounce (ICMP port unreachable); other clients are still served."""
    cfg = config(clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.0/8"]}])
    with trio.fail_after(20):
        async with running(cfg) as rt:
            peer = udp_sink("127.0.0.2")
            with peer:
                gone = client(rt)
                async with gone:
                    await gone.allocate()
                    await gone.create_permission(peer.getsockname())
                    relayed = gone.relayed
                    assert relayed is not None
                sent = rt.stats.listeners["udp"].traffic.tx_packets
                for i in range(50):
                    peer.sendto(b"to nobody %d" % i, relayed)
                await until(lambda: rt.stats.listeners["udp"].traffic.tx_packets >= sent + 50,
                            "the Data indications to be sent")
                async with client(rt) as other:
                    for _ in range(3):
                        assert await other.binding() == other.local_address
                    await other.allocate()
                assert rt.stats.allocations_active == 2
