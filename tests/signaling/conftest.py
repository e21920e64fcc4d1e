"""Fixtures: a mock Nextcloud (capabilities + signed backend endpoint) and a running server."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

from benchmarks.mock_nextcloud import MockNextcloud
from relay.config import Config
from relay.runtime import Runtime
from relay.signaling.server import serve_signaling

SECRET = "the-shared-secret"
TALK_PATH = "ocs/v2.php/apps/spreed/api/v3/signaling/backend"  # where Talk points hellos
OTHER_SECRET = "another-secret"


@pytest.fixture
async def nextcloud(nursery: trio.Nursery) -> MockNextcloud:
    mock = MockNextcloud(SECRET.encode())
    serve = functools.partial(trio.serve_tcp, mock.handle, 0, host="127.0.0.1")
    listeners = await nursery.start(serve)
    mock.port = listeners[0].socket.getsockname()[1]
    return mock


@attrs.define
class Server:
    runtime: Runtime
    host: str
    port: int
    nextcloud: MockNextcloud

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/spreed"

    async def client(self) -> Client:
        ws = await trio_websocket.connect_websocket_url(
            self._nursery, self.ws_url, message_queue_size=1024)
        c = Client(ws, self.nextcloud)
        welcome = await c.recv()
        assert welcome["type"] == "welcome"
        return c

    _nursery: Any = None


@attrs.define(eq=False)
class Client:
    ws: trio_websocket.WebSocketConnection
    nextcloud: MockNextcloud
    session_id: str = ""
    resume_id: str = ""
    _next: int = 0

    def new_id(self) -> str:
        self._next += 1
        return str(self._next)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(msg))

    async def recv(self) -> dict[str, Any]:
        with trio.fail_after(5):
            return dict(json.loads(await self.ws.get_message()))

    async def recv_until(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for _ in range(50):
            m = await self.recv()
            if pred(m):
                return m
        raise AssertionError("expected message never came")

    async def drain(self, wait: float = 0.2) -> list[dict[str, Any]]:
        """Everything that arrives until the socket is quiet for `wait` seconds."""
        out = []
        while True:
            with trio.move_on_after(wait):
                out.append(dict(json.loads(await self.ws.get_message())))
                continue
            return out

    async def nothing(self, wait: float = 0.2) -> None:
        """Assert that no message arrives within `wait` seconds."""
        with trio.move_on_after(wait):
            m = await self.ws.get_message()
            raise AssertionError(f"unexpected message {m}")

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        mid = self.new_id()
        await self.send({"id": mid, **msg})
        reply = await self.recv_until(lambda m: m.get("id") == mid)
        return reply

    async def say_hello(self, hello: dict[str, Any]) -> dict[str, Any]:
        """Send a `hello` body; on success remember the session and resume ids."""
        reply = await self.request({"type": "hello", "hello": hello})
        if reply["type"] == "hello":
            self.session_id = reply["hello"]["sessionid"]
            self.resume_id = reply["hello"]["resumeid"]
        return reply

    async def hello(self, userid: str = "", url: str | None = None,
                    features: list[str] | None = None, **params: Any) -> dict[str, Any]:
        """A v1 hello as Talk sends it, for `userid` (the mock Nextcloud's auth param)."""
        url = url if url is not None else self.nextcloud.url + TALK_PATH
        hello: dict[str, Any] = {"version": "1.0", "auth": {
            "url": url, "params": {"userid": userid, **params}}}
        if features is not None:
            hello["features"] = features
        return await self.say_hello(hello)

    async def join(self, roomid: str, room_session: str = "") -> dict[str, Any]:
        return await self.request({"type": "room", "room": {
            "roomid": roomid, "sessionid": room_session}})

    async def message(self, recipient: dict[str, Any], data: Any,
                      kind: str = "message") -> None:
        await self.send({"type": kind, kind: {"recipient": recipient, "data": data}})


def signaling_config(nc: MockNextcloud, **backend: Any) -> dict[str, Any]:
    be = backend or {"backends": [{"id": "nc1", "urls": [nc.url], "secret": SECRET}]}
    return {"version": "v1", "auth": {"type": "none"},
            "signaling": {"http": {"listen": "127.0.0.1:0"}, "backend": be}}


@pytest.fixture
def sig_config(nextcloud: MockNextcloud) -> dict[str, Any]:
    return signaling_config(nextcloud)


@pytest.fixture
def make_server(nursery: trio.Nursery, nextcloud: MockNextcloud) -> Any:
    async def make(raw: dict[str, Any] | None = None) -> Server:
        cfg = Config.from_mapping(raw or signaling_config(nextcloud))
        runtime = Runtime(cfg)
        host, port = await nursery.start(serve_signaling, runtime)
        srv = Server(runtime, host, port, nextcloud)
        srv._nursery = nursery
        return srv

    return make


@pytest.fixture
async def server(make_server: Any) -> Server:
    with trio.fail_after(10):
        srv: Server = await make_server()
    return srv


async def raw_http(port: int, data: bytes, *, head_only: bool = False) -> bytes:
    """Send `data` to 127.0.0.1:`port` as it is and read the answer until the server closes
    (or, `head_only`, until the end of the response head), 3 s at most."""
    s = await trio.open_tcp_stream("127.0.0.1", port)
    await s.send_all(data)
    out = b""
    with trio.move_on_after(3):
        while not (head_only and b"\r\n\r\n" in out):
            chunk = await s.receive_some(65536)
            if not chunk:
                break
            out += chunk
    await s.aclose()
    return out
