"""TURN over TCP and TLS listeners (RFC 8656 §3.1): the control connection is a stream, the
relayed transport UDP.  relay runs in-process on loopback; peers are our UDP echo peer."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from benchmarks.echo_peer import serve_udp_echo
from benchmarks.turnclient import TurnError, new_transaction_id
from relay.app import Running
from relay.config import Config
from relay.errors import ConfigError
from relay.net import stream as stream_mod
from relay.stun import (
    Message,
    MessageClass,
    Method,
    RequestedTransport,
    encode_channel_data,
)
from tests.turn.gateway_harness import (
    PASSWORD,
    USER,
    config,
    listener_address,
    running,
    until,
)
from tests.turn.stream_client import StreamTurnClient

CHAN = 0x4000
PEERS = [{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1/32"]}]


def tcp_config(**turn: Any) -> Config:
    return config(listeners=[{"name": "tcp", "protocol": "TURN-TCP", "address": "127.0.0.1",
                              "port": 0, "routes": ["peers"]}], turn=turn or None)


@asynccontextmanager
async def tcp_client(rt: Running, name: str = "tcp", tls: ssl.SSLContext | None = None
                     ) -> AsyncIterator[StreamTurnClient]:
    async with StreamTurnClient(listener_address(rt, name), USER, PASSWORD, tls=tls) as c:
        yield c


async def recv_kind(c: StreamTurnClient, kind: str) -> tuple[Any, bytes]:
    while True:
        got, meta, data = await c.recv(timeout=5)
        if got == kind:
            return meta, data


def raw_connect(rt: Running, name: str = "tcp") -> socket.socket:
    s = socket.create_connection(listener_address(rt, name))
    s.setblocking(False)
    return s


async def closed_by_server(s: socket.socket) -> bool:
    """Read until EOF (True) or reset; False if the server sent bytes instead."""
    while True:
        await trio.lowlevel.wait_readable(s)
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return True
        return not data


# -- TCP ----------------------------------------------------------------------------------


async def test_tcp_binding_and_allocate_after_401() -> None:
    with trio.fail_after(20):
        async with running(tcp_config()) as rt, tcp_client(rt) as c:
            assert rt.health.listeners["tcp"].bound
            assert await c.binding() == c.local_address
            await c.allocate()
            assert c.relayed is not None and c.mapped == c.local_address
            st = rt.stats
            assert st.requests[("allocate", "401")] == 1
            assert st.requests[("allocate", "success")] == 1
            assert st.allocations_active == 1
            assert st.listeners["tcp"].connections == 1


async def test_tcp_send_indication_and_data_indication_back() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running(tcp_config()) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with tcp_client(rt) as c:
                await c.allocate()
                await c.create_permission(peer)
                await c.send_indication(peer, b"hello over tcp")
                meta, data = await recv_kind(c, "data")
                assert (meta, data) == (peer, b"hello over tcp")
                traffic = rt.stats.listeners["tcp"].traffic
                assert traffic.rx_packets >= 3 and traffic.tx_packets >= 3
            nursery.cancel_scope.cancel()


async def test_tcp_channel_data_both_ways_padded_to_4() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running(tcp_config()) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with tcp_client(rt) as c:
                await c.allocate()
                await c.channel_bind(CHAN, peer)
                for size in range(1, 9):
                    payload = bytes(range(size))
                    await c.send_channel(CHAN, payload)
                    meta, data = await recv_kind(c, "channel")
                    assert (meta, data) == (CHAN, payload)
                    frame = c.frames[-1]
                    assert len(frame) % 4 == 0
                    assert frame[4 + size:] == b"\x00" * (-size & 3)
            assert rt.stats.drops["malformed"] == 0
            nursery.cancel_scope.cancel()


async def test_tcp_frames_split_byte_by_byte_and_merged() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, running(tcp_config()) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with tcp_client(rt) as c:
                await c.allocate()
                await c.channel_bind(CHAN, peer)
                # several frames in one write: odd-length ChannelData, a Send indication,
                # ChannelData again
                merged = (encode_channel_data(CHAN, b"one", pad=True)
                          + c.send_indication_bytes(peer, b"two")
                          + encode_channel_data(CHAN, b"three", pad=True))
                await c.send_raw(merged)
                got = set()
                while len(got) < 3:
                    kind, _meta, data = await c.recv(timeout=5)
                    got.add((kind, data))
                # ("two" comes back as ChannelData: the peer has a channel)
                assert got == {("channel", b"one"), ("channel", b"two"), ("channel", b"three")}
                # one frame split byte by byte, each byte its own write
                frame = encode_channel_data(CHAN, b"split!!", pad=True)
                for i in range(len(frame)):
                    await c.send_raw(frame[i : i + 1])
                    await trio.sleep(0.001)
                assert await recv_kind(c, "channel") == (CHAN, b"split!!")
                # a request split byte by byte too
                req = Message(Method.BINDING, MessageClass.REQUEST,
                              new_transaction_id()).encode()
                for i in range(len(req)):
                    await c.send_raw(req[i : i + 1])
                _kind, msg, _raw = await c.recv(timeout=5)
                assert msg.method == Method.BINDING and msg.cls == MessageClass.SUCCESS
            assert rt.stats.drops["malformed"] == 0
            nursery.cancel_scope.cancel()


async def test_tcp_close_deletes_allocation_and_frees_relay_port() -> None:
    with trio.fail_after(20):
        async with running(tcp_config()) as rt:
            async with tcp_client(rt) as c:
                await c.allocate()
                assert c.relayed is not None
                relay_port = c.relayed[1]
                assert rt.stats.allocations_active == 1
            await until(lambda: rt.stats.allocations_active == 0, "allocation deleted")
            assert rt.stats.listeners["tcp"].connections == 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", relay_port))  # the relay socket is closed


async def test_tcp_refresh_zero_deletes_allocation_but_keeps_connection() -> None:
    with trio.fail_after(20):
        async with running(tcp_config()) as rt, tcp_client(rt) as c:
            await c.allocate()
            await c.refresh(0)
            assert rt.stats.allocations_active == 0
            assert await c.binding() == c.local_address
            await c.allocate()  # a new allocation on the same connection
            assert rt.stats.allocations_active == 1


async def test_tcp_idle_connection_without_allocation_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_mod, "IDLE_TIMEOUT", 0.3)
    with trio.fail_after(20):
        async with running(tcp_config()) as rt:
            with raw_connect(rt) as s:
                assert await closed_by_server(s)
            with raw_connect(rt) as s:  # half a frame is no better than none (slowloris)
                s.send(encode_channel_data(CHAN, b"abcd")[:5])
                assert await closed_by_server(s)
            # With an allocation, the connection outlives the idle timeout.
            async with tcp_client(rt) as c:
                await c.allocate()
                await trio.sleep(0.6)
                assert await c.binding() == c.local_address


async def test_tcp_garbage_closes_connection_and_counts_malformed() -> None:
    with trio.fail_after(20):
        async with running(tcp_config()) as rt:
            before = rt.stats.drops["malformed"]
            with raw_connect(rt) as s:
                s.send(b"\xff" * 32)
                assert await closed_by_server(s)
            assert rt.stats.drops["malformed"] == before + 1
            with raw_connect(rt) as s:  # STUN-looking but without the magic cookie
                s.send(b"\x00\x01\x00\x00" + b"\x00" * 16)
                assert await closed_by_server(s)
            assert rt.stats.drops["malformed"] == before + 2


async def test_tcp_challenges_are_not_rate_limited() -> None:
    # The 401 rate limit is against spoofed UDP floods; a stream client never retransmits,
    # so a silent 401 would stall it (coturn's uclient -t -m 5, twice at once, hit it).
    with trio.fail_after(20):
        async with running(tcp_config(unauthorized_ratelimit=1, unauthorized_burst=1)) as rt:
            for _ in range(4):
                async with tcp_client(rt) as c:
                    await c.allocate()
            assert rt.stats.drops["ratelimited"] == 0
            assert rt.stats.requests[("allocate", "401")] == 4


async def test_tcp_requested_transport_tcp_is_442() -> None:
    with trio.fail_after(20):
        async with running(tcp_config()) as rt, tcp_client(rt) as c:
            req = Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id(),
                          [RequestedTransport(6)])
            with pytest.raises(TurnError) as exc:
                await c.request(req)
            assert exc.value.code == 442
            assert rt.stats.requests[("allocate", "442")] == 1


async def test_tcp_and_udp_listeners_share_a_port_number() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
    cfg = config(listeners=[
        {"name": "udp", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": port,
         "routes": ["peers"]},
        {"name": "tcp", "protocol": "TURN-TCP", "address": "127.0.0.1", "port": port,
         "routes": ["peers"]},
    ])
    with trio.fail_after(20):
        async with running(cfg) as rt, tcp_client(rt) as c:
            assert rt.health.listeners["udp"].port == rt.health.listeners["tcp"].port == port
            await c.allocate()
    with pytest.raises(ConfigError, match=r"listeners\[1\]\.port"):
        config(listeners=[
            {"name": "a", "protocol": "TURN-TCP", "address": "127.0.0.1", "port": 3478},
            {"name": "b", "protocol": "TURN-TCP", "address": "127.0.0.1", "port": 3478},
        ])


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


def tls_config(cert: str, key: str) -> Config:
    return config(listeners=[{"name": "tls", "protocol": "TURN-TLS", "address": "127.0.0.1",
                              "port": 0, "routes": ["peers"], "cert": cert, "key": key}])


async def test_tls_allocate_and_channel_round_trip(ca: trustme.CA, tmp_path: Path) -> None:
    cfg = tls_config(*tls_files(ca, tmp_path))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, running(cfg) as rt:
            peer = await nursery.start(serve_udp_echo, "127.0.0.1", 0)
            async with tcp_client(rt, "tls", tls=ctx) as c:
                await c.allocate()
                await c.channel_bind(CHAN, peer)
                await c.send_channel(CHAN, b"over tls")
                assert await recv_kind(c, "channel") == (CHAN, b"over tls")
                await c.send_channel(CHAN, b"odd")
                assert await recv_kind(c, "channel") == (CHAN, b"odd")
                assert c.frames[-1] == encode_channel_data(CHAN, b"odd", pad=True)
                assert rt.stats.listeners["tls"].connections == 1
            await until(lambda: rt.stats.allocations_active == 0, "allocation deleted")
            nursery.cancel_scope.cancel()


async def test_tls_handshake_must_finish_in_time(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_mod, "HANDSHAKE_TIMEOUT", 0.3)
    cfg = tls_config(*tls_files(ca, tmp_path))
    with trio.fail_after(20):
        async with running(cfg) as rt:
            with raw_connect(rt, "tls") as s:  # connects, never says hello
                assert await closed_by_server(s)


def test_tls_listener_needs_cert_and_key(ca: trustme.CA, tmp_path: Path) -> None:
    cert, key = tls_files(ca, tmp_path)
    with pytest.raises(ConfigError) as exc:
        tls_config("", key)
    assert exc.value.key == "listeners[0].cert"
    with pytest.raises(ConfigError) as exc:
        tls_config(cert, "")
    assert exc.value.key == "listeners[0].key"
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as exc:
        tls_config(str(tmp_path / "junk.pem"), key)
    assert exc.value.key == "listeners[0].cert"
    with pytest.raises(ConfigError) as exc:
        tls_config(str(tmp_path / "missing.pem"), key)
    assert exc.value.key == "listeners[0].cert"


def test_dtls_listener_still_refused() -> None:
    with pytest.raises(ConfigError, match="not supported yet") as exc:
        config(listeners=[{"name": "d", "protocol": "TURN-DTLS", "address": "127.0.0.1",
                           "port": 0}])
    assert exc.value.key == "listeners[0].protocol"
