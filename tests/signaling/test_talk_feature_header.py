"""Talk reads `X-Spreed-Signaling-Features` on the welcome endpoint, the WebSocket upgrade and
every backend-API response, and clients read welcome / hello `features`: the Talk features
implemented here must be listed in all of them."""

from __future__ import annotations

import json

import httpx
import trio
import trio_websocket

from tests.signaling.conftest import Client, Server
from tests.signaling.talk_clients import hello
from tests.signaling.test_signaling_backend_room_api import post

OURS = {"audio-video-permissions", "transient-data", "transient-sessiondata", "chat-relay",
        "changed-users", "join-features", "incall-all"}


def listed(header: str) -> set[str]:
    return {f.strip() for f in header.split(",")}


async def test_features_everywhere_talk_looks(server: Server) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            r = await http.get("/api/v1/welcome")
            assert OURS <= listed(r.headers["x-spreed-signaling-features"])
        r = await post(server, "r1", {"type": "message", "message": {"data": {}}})
        assert r.status_code == 200
        assert OURS <= listed(r.headers["x-spreed-signaling-features"])
        # the WebSocket upgrade answer
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(
            b"GET /spreed HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = await stream.receive_some(65536)
            assert chunk
            raw += chunk
        await stream.aclose()
        head = raw.split(b"\r\n\r\n")[0].decode().split("\r\n")
        assert head[0].startswith("HTTP/1.1 101")
        values = [line.split(":", 1)[1] for line in head[1:]
                  if line.split(":", 1)[0].lower() == "x-spreed-signaling-features"]
        assert len(values) == 1 and OURS <= listed(values[0])
        # welcome and hello
        async with trio_websocket.open_websocket_url(server.ws_url) as ws:
            welcome = json.loads(await ws.get_message())
            assert OURS <= set(welcome["welcome"]["features"])
            c = Client(ws, server.nextcloud)
            reply = await hello(c, "alice")
            assert OURS <= set(reply["hello"]["server"]["features"])
