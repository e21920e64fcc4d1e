"""The plain HTTP side of the signaling port: welcome, stats, metrics, errors, the gate."""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from relay import __version__
from tests.signaling.conftest import raw_http


async def _get(server: Any, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
        return await c.get(path, **kw)



async def test_welcome_endpoint(server: Any) -> None:
    with trio.fail_after(10):
        r = await _get(server, "/api/v1/welcome")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.text.endswith("\n")
        assert json.loads(r.text) == {"nextcloud-spreed-signaling": "Welcome",
                                      "version": __version__}
        # what Talk's Manager::hasRequiredFeatures and its optional list look for, and ours
        assert r.headers["x-spreed-signaling-features"] == (
            "audio-video-permissions, changed-users, chat-relay, dialout, federation, "
            "hello-v2, incall-all, join-features, recipient-call, switchto, "
            "transient-data, transient-sessiondata, welcome")


async def test_stats_and_metrics_from_loopback(server: Any) -> None:
    with trio.fail_after(10):
        c = await server.client()
        await c.hello("alice")
        await c.join("room-1", "t1")
        await c.recv()
        r = await _get(server, "/api/v1/stats")
        assert r.status_code == 200 and r.json() == {"rooms": 1, "sessions": 1}
        r = await _get(server, "/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = r.text
        for line in [
            'signaling_hub_sessions{backend="nc1",clienttype="client"} 1.0',
            'signaling_hub_sessions_total{backend="nc1",clienttype="client"} 1.0',
            'signaling_hub_rooms{backend="nc1"} 1.0',
            'signaling_room_sessions{backend="nc1",clienttype="client",room="room-1"} 1.0',
            'signaling_server_messages_total{type="hello"} 1.0',
            'signaling_server_messages_total{type="room"} 1.0',
            "signaling_backend_current 1.0",
            "signaling_hub_sessions_resume_failed_total 0.0",
            'signaling_backend_client_requests_total{backend="nc1"} 2.0',
            'signaling_backend_client_requests_duration_count{backend="nc1"} 2.0',
            'signaling_client_messages_total{direction="incoming"} 2.0',
            "# TYPE signaling_client_rtt histogram",
        ]:
            assert line in text, line
        # families without series are not exposed (as upstream), MCU families never
        assert "signaling_backend_session_limit{" not in text
        assert "signaling_mcu_" not in text and "signaling_proxy_" not in text
        assert "signaling_call_sessions{" not in text


async def test_gate_rejects_addresses_outside_allowed_ips(make_server: Any, nextcloud: Any) -> None:
    raw = {"version": "v1", "auth": {"type": "none"},
           "stats": {"allowed_ips": ["10.1.0.0/16"]},
           "signaling": {"http": {"listen": "127.0.0.1:0"},
                         "backend": {"allowall": True, "secret": "s"}}}
    with trio.fail_after(10):
        srv = await make_server(raw)
        for path in ("/api/v1/stats", "/metrics"):
            r = await _get(srv, path)
            assert r.status_code == 403 and "Authentication check failed" in r.text
        # loopback is a trusted proxy by default: X-Real-IP decides
        r = await _get(srv, "/metrics", headers={"X-Real-IP": "10.1.2.3"})
        assert r.status_code == 200
        r = await _get(srv, "/api/v1/welcome")
        assert r.status_code == 200


async def test_http_errors(server: Any) -> None:
    with trio.fail_after(10):
        assert (await _get(server, "/nope")).status_code == 404
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
            r = await c.post("/api/v1/welcome", content=b"{}")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = await _get(server, "/spreed")  # not an upgrade
        assert r.status_code == 400
        out = await raw_http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 20000)
        assert out.startswith(b"HTTP/1.1 431")
        out = await raw_http(server.port, b"garbage\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400")
        # keep-alive: two requests on one connection
        out = await raw_http(server.port, b"GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.count(b"HTTP/1.1 200") == 1 and out.count(b"HTTP/1.1 404") == 1


async def test_slow_client_is_dropped(server: Any, monkeypatch: Any) -> None:
    from relay.signaling import server as srvmod

    monkeypatch.setattr(srvmod, "REQUEST_TIMEOUT", 0.5)
    with trio.fail_after(5):
        s = await trio.open_tcp_stream("127.0.0.1", server.port)
        await s.send_all(b"GET /api/v1/welcome HTTP/1.1\r\nHo")
        out = b""
        while True:
            chunk = await s.receive_some(65536)
            if not chunk:
                break
            out += chunk
        assert out.startswith(b"HTTP/1.1 408")


def _masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    assert len(payload) < 65536
    mask = b"\x01\x02\x03\x04"
    head = b"\x81" + (bytes([0x80 | len(payload)]) if len(payload) < 126
                      else b"\xfe" + len(payload).to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_frames_pipelined_with_the_upgrade_are_handled(server: Any) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request, TextMessage

    client = WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host="127.0.0.1", target="/spreed"))
    hello = json.dumps({"id": "p", "type": "hello", "hello": {"version": "1.0", "auth": {
        "url": server.nextcloud.url, "params": {"userid": "pipelined"}}}})
    with trio.fail_after(10):
        s = await trio.open_tcp_stream("127.0.0.1", server.port)
        await s.send_all(request + _masked_text_frame(hello))  # one write
        texts: list[dict[str, Any]] = []
        while not any(m.get("type") == "hello" for m in texts):
            chunk = await s.receive_some(65536)
            assert chunk, "connection closed before the hello answer"
            client.receive_data(chunk)
            texts.extend(json.loads(e.data) for e in client.events()
                         if isinstance(e, TextMessage))
        assert [m["type"] for m in texts] == ["welcome", "hello"]
        assert texts[1]["hello"]["userid"] == "pipelined"
        await s.aclose()


async def test_whole_header_block_over_16_kib_gets_431(server: Any) -> None:
    """A head that arrives complete in one write is measured too (h11 alone bounds only
    a head still incomplete), in one big field or in many small ones."""
    with trio.fail_after(15):
        for size in (20_000, 60_000):
            r = await _get(server, "/api/v1/welcome", headers={"X-Big": "a" * size})
            assert r.status_code == 431
            many = {f"X-H{i}": "b" * 1000 for i in range(size // 1000)}
            r = await _get(server, "/api/v1/welcome", headers=many)
            assert r.status_code == 431
        r = await _get(server, "/api/v1/welcome", headers={"X-Big": "a" * 15_000})
        assert r.status_code == 200
