"""The admin app over real HTTP on 127.0.0.1 (port 0): metrics, gate, health, hostile clients."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from relay.config import Config, Endpoint
from relay.errors import ConfigError
from relay.metrics.admin import AdminApp, Routes, serve_admin

METRICS_CT = "text/plain; version=0.0.4; charset=utf-8"


async def get(url: str, **kwargs: Any) -> httpx.Response:
    with trio.fail_after(10):
        async with httpx.AsyncClient(trust_env=False) as client:
            return await client.request(kwargs.pop("method", "GET"), url, **kwargs)


async def test_started_reports_real_bound_ports(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config())
    assert set(adm.bound) == {"metrics", "health"}
    for role in ("metrics", "health"):
        host, port = adm.bound[role]
        assert host == "127.0.0.1" and port != 0
    assert adm.bound["metrics"] != adm.bound["health"]
    r = await get(adm.url("health", "/live"))
    assert r.status_code == 200


async def test_metrics_served_as_text_004_and_parsed(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config())
    st = adm.runtime.stats
    st.listener("udp-a").traffic.rx_bytes += 1234
    st.allocations_active = 3
    # Prometheus asks for OpenMetrics first; we must still answer the text format.
    r = await get(adm.url("metrics", "/metrics"), headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"})
    assert r.status_code == 200
    assert r.headers["content-type"] == METRICS_CT
    lines = r.text.splitlines()
    assert "# TYPE stunner_listener_connections gauge" in lines
    assert "# TYPE stunner_listener_connections_total counter" in lines
    assert "# EOF" not in lines  # an OpenMetrics marker
    fams = {(f.name, f.type): f for f in text_string_to_metric_families(r.text)}
    by = fams[("stunner_listener_bytes", "counter")]
    rx = [s.value for s in by.samples if s.labels == {"direction": "rx", "name": "udp-a"}]
    assert rx == [1234]
    aa = fams[("stunner_allocations_active", "gauge")]
    assert [s.value for s in aa.samples] == [3]
    if sys.platform.startswith("linux"):
        assert ("process_cpu_seconds", "counter") in fams
        assert ("process_resident_memory_bytes", "gauge") in fams
    # The metrics socket serves only /metrics, not the health paths.
    assert (await get(adm.url("metrics", "/live"))).status_code == 404
    assert (await get(adm.url("health", "/metrics"))).status_code == 404


async def test_gate_direct_peer_not_allowed_gets_403(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config(allowed_ips=["10.0.0.0/8"]))
    r = await get(adm.url("metrics", "/metrics"))
    assert r.status_code == 403
    assert r.text.strip() == "Authentication check failed"
    assert "stunner_" not in r.text
    # Health stays open to everyone.
    assert (await get(adm.url("health", "/live"))).status_code == 200
    assert (await get(adm.url("health", "/status"))).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Real-IP": "10.1.2.3"}, 200),
        ({"X-Forwarded-For": "10.1.2.3"}, 200),
        ({"X-Forwarded-For": "10.9.9.9, 127.0.0.5"}, 200),  # right-most untrusted hop
        ({"X-Forwarded-For": "10.9.9.9, 203.0.113.1"}, 403),  # spoofed left part ignored
        ({"X-Real-IP": "203.0.113.1"}, 403),
        ({}, 403),  # the trusted proxy itself is not allowed
    ],
)
async def test_gate_forwarded_headers_from_trusted_proxy(
    start_admin: Any, make_config: Callable[..., Config], headers: dict[str, str], status: int
) -> None:
    # We connect from 127.0.0.1, which is a trusted proxy here.
    adm = await start_admin(make_config(allowed_ips=["10.0.0.0/8"],
                                        trusted_proxies=["127.0.0.0/8"]))
    r = await get(adm.url("metrics", "/metrics"), headers=headers)
    assert r.status_code == status


async def test_gate_forwarded_headers_from_untrusted_peer_ignored(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config(allowed_ips=["10.0.0.0/8"],
                                        trusted_proxies=["192.168.0.0/16"]))
    for headers in ({"X-Real-IP": "10.1.2.3"}, {"X-Forwarded-For": "10.1.2.3"}):
        r = await get(adm.url("metrics", "/metrics"), headers=headers)
        assert r.status_code == 403
    # And the reverse: our real IP is allowed, a forwarded foreign IP does not lock us out.
    adm2 = await start_admin(make_config(allowed_ips=["127.0.0.1/32"],
                                         trusted_proxies=["192.168.0.0/16"]))
    r = await get(adm2.url("metrics", "/metrics"), headers={"X-Real-IP": "203.0.113.1"})
    assert r.status_code == 200


async def test_status_document_and_no_secrets(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config())
    adm.runtime.stats.allocations_active = 7
    adm.runtime.stats.listener("udp-a").opened()
    r = await get(adm.url("health", "/status"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["version"] == adm.runtime.version
    assert doc["name"] == adm.runtime.config.admin.name
    assert doc["uptime_seconds"] >= 0
    assert doc["allocations"] == 7
    assert doc["ready"] is False
    lis = {x["name"]: x for x in doc["listeners"]}
    assert set(lis) == {"udp-a", "udp-b"}
    assert lis["udp-a"]["protocol"] == "TURN-UDP"
    assert lis["udp-a"]["connections"] == 1
    assert lis["udp-a"]["bound"] is False
    cl = {x["name"]: x for x in doc["clusters"]}
    assert cl["media"]["endpoints"] == ["10.0.0.0/8", "192.0.2.7/32:<1000-2000>"]
    assert cl["backup"]["type"] == "STATIC"
    assert "s3cret-pw" not in r.text and "user1" not in r.text


async def test_live_ready_and_methods(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config())
    live = await get(adm.url("health", "/live"))
    assert live.status_code == 200 and json.loads(live.text) == {"status": "live"}
    ready = await get(adm.url("health", "/ready"))
    assert ready.status_code == 503
    assert "starting" in ready.json()["reasons"]
    assert (await get(adm.url("health", "/nope"))).status_code == 404
    assert (await get(adm.url("health", "/"))).status_code == 404
    post = await get(adm.url("health", "/live"), method="POST", content=b"x" * 100)
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert (await get(adm.url("metrics", "/metrics"), method="DELETE")).status_code == 405
    head = await get(adm.url("health", "/status"), method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_same_host_port_one_server_serves_both(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    port = _free_port()
    adm = await start_admin(make_config(metrics=Endpoint("127.0.0.1", port, "/metrics"),
                                        health=Endpoint("127.0.0.1", port, "/")))
    assert adm.bound["metrics"] == adm.bound["health"] == ("127.0.0.1", port)
    assert (await get(adm.url("metrics", "/metrics"))).status_code == 200
    assert (await get(adm.url("health", "/live"))).status_code == 200


async def test_health_path_prefix_and_metrics_off(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config(metrics=None, health=Endpoint("127.0.0.1", 0, "/hc/")))
    assert set(adm.bound) == {"health"}
    assert (await get(adm.url("health", "/hc/live"))).status_code == 200
    assert (await get(adm.url("health", "/live"))).status_code == 404
    assert (await get(adm.url("health", "/metrics"))).status_code == 404


async def test_health_off_metrics_on(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config(health=None))
    assert set(adm.bound) == {"metrics"}
    assert (await get(adm.url("metrics", "/metrics"))).status_code == 200


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_endpoints_and_gate(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config(metrics=Endpoint("::1", 0, "/metrics"),
                                        health=Endpoint("::1", 0, "/")))
    assert adm.bound["metrics"][0] == "::1"
    assert (await get(adm.url("metrics", "/metrics"))).status_code == 200  # ::1 is allowed
    assert (await get(adm.url("health", "/live"))).status_code == 200
    adm2 = await start_admin(make_config(metrics=Endpoint("::1", 0, "/metrics"),
                                         allowed_ips=["127.0.0.1/32"]))
    assert (await get(adm2.url("metrics", "/metrics"))).status_code == 403


async def test_port_in_use_is_a_clear_error(make_config: Callable[..., Config],
                                            make_runtime: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rt = make_runtime(make_config(metrics=Endpoint("127.0.0.1", port, "/metrics")))
        with trio.fail_after(10), pytest.raises(ConfigError) as info:
            await serve_admin(rt)  # raises before it would report started
        assert info.value.key == "admin.metrics_endpoint"
        assert str(port) in str(info.value)


async def test_oversized_headers_refused_and_server_keeps_serving(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config())
    host, port = adm.bound["health"]
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET /live HTTP/1.1\r\nHost: x\r\nX-Big: "
                                  + b"a" * 64 * 1024 + b"\r\n\r\n")
            reply = b""
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                reply += chunk
        assert not reply.startswith(b"HTTP/1.1 200")
        if reply:
            assert reply.split(b" ", 2)[1] in (b"400", b"431")
    assert (await get(adm.url("health", "/live"))).status_code == 200


async def test_slow_client_does_not_stall_others(
    start_admin: Any, make_config: Callable[..., Config]
) -> None:
    adm = await start_admin(make_config())
    host, port = adm.bound["metrics"]
    slow = [await trio.open_tcp_stream(host, port) for _ in range(20)]
    try:
        for s in slow:
            await s.send_all(b"GET /metr")  # and then nothing: a slowloris
        for _ in range(3):
            r = await get(adm.url("metrics", "/metrics"))
            assert r.status_code == 200
    finally:
        for s in slow:
            await s.aclose()


async def test_connection_cap(
    start_admin: Any, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.metrics import admin as admin_module

    monkeypatch.setattr(admin_module, "MAX_CONNECTIONS", 3)
    adm = await start_admin(make_config())
    host, port = adm.bound["health"]
    idle = [await trio.open_tcp_stream(host, port) for _ in range(3)]
    for s in idle:
        await s.send_all(b"GET /li")
    await trio.sleep(0.1)
    with pytest.raises(httpx.TransportError):
        await get(adm.url("health", "/live"))
    for s in idle:
        await s.aclose()
    await trio.sleep(0.1)
    assert (await get(adm.url("health", "/live"))).status_code == 200


async def test_stops_promptly_with_a_client_that_never_reads(
    make_config: Callable[..., Config], make_runtime: Any
) -> None:
    rt = make_runtime(make_config())
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_admin, rt)
            host, port = bound["health"]
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # a tiny window
            await sock.connect((host, port))
            hostile = trio.SocketStream(sock)
            # Pipeline many requests and never read a byte of the answers.
            await hostile.send_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        await hostile.aclose()
    # The sockets are closed: nothing listens there any more.
    with pytest.raises(OSError), socket.create_connection((host, port), timeout=2):
        pass


async def test_client_that_stops_reading_is_disconnected(
    start_admin: Any, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.metrics import admin as admin_module

    monkeypatch.setattr(admin_module, "SEND_TIMEOUT", 0.3)
    adm = await start_admin(make_config())
    host, port = adm.bound["health"]
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    with trio.fail_after(20):
        await sock.connect((host, port))
        stream = trio.SocketStream(sock)
        await stream.send_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
        await trio.sleep(1.5)  # the server's send deadline passes while we do not read
        # Others are served meanwhile.
        assert (await get(adm.url("health", "/live"))).status_code == 200
        received = b""
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            received += chunk
        await stream.aclose()
    # The connection was cut before all 100 answers were written.
    assert 0 < received.count(b"HTTP/1.1 200") < 100


async def test_lifespan_scope_is_answered(make_config: Callable[..., Config],
                                          make_runtime: Any) -> None:
    app = AdminApp(make_runtime(make_config()), Routes(health_prefix=""))
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(msg: Any) -> None:
        sent.append(dict(msg))

    with trio.fail_after(5):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]


@pytest.mark.parametrize("size", [20_000, 60_000])
async def test_whole_header_block_over_16_kib_gets_431(
    start_admin: Any, make_config: Callable[..., Config], size: int
) -> None:
    """A head that arrives complete is refused as well (hypercorn alone bounds only one
    still incomplete), on the health and the metrics socket alike."""
    adm = await start_admin(make_config())
    with trio.fail_after(10):
        for name, path in (("health", "/live"), ("metrics", "/metrics")):
            r = await get(adm.url(name, path), headers={"X-Big": "a" * size})
            assert r.status_code == 431
            many = {f"X-H{i}": "b" * 1000 for i in range(size // 1000)}
            assert (await get(adm.url(name, path), headers=many)).status_code == 431
            r = await get(adm.url(name, path), headers={"X-Big": "a" * 15_000})
            assert r.status_code == 200
