"""Fixtures: a mock Nextcloud (capabilities + signed backend endpoint) and a running server."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import attrs
import h11
import pytest
import trio
import trio_websocket

from relay.config import Config
from relay.runtime import Runtime
from relay.signaling.server import serve_signaling

SECRET = "the-shared-secret"
OTHER_SECRET = "another-secret"


@attrs.define
class MockNextcloud:
    """Answers like Nextcloud's signaling backend; records every request it accepted."""

    secret: bytes
    features: list[str] = attrs.Factory(lambda: ["signaling-v3"])
    port: int = 0
    requests: list[dict[str, Any]] = attrs.Factory(list)
    paths: list[str] = attrs.Factory(list)
    bad_checksums: int = 0
    room_permissions: dict[str, list[str]] = attrs.Factory(dict)
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def of_type(self, t: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("type") == t]

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        t = body.get("type")
        if t == "auth":
            params = body["auth"]["params"]
            if params.get("fail"):
                return {"type": "error", "error": {"code": "invalid_token",
                                                    "message": "The token is invalid"}}
            if params.get("garbage"):
                return {"type": "something-else"}
            userid = params.get("userid", "")
            auth: dict[str, Any] = {"version": "1.0", "userid": userid}
            if userid:
                auth["user"] = {"displayname": f"Displayname {userid}"}
            return {"type": "auth", "auth": auth}
        if t == "room":
            room = body["room"]
            if room["roomid"] == "test-invalid-room":
                return {"type": "error", "error": {"code": "no_such_room",
                                                    "message": "The user is not invited"}}
            if room["roomid"] == "test-not-a-room":
                return {"type": "auth", "auth": {}}
            answer: dict[str, Any] = {"version": "1.0", "roomid": room["roomid"],
                                      "properties": {"name": f"Room {room['roomid']}"}}
            perms = self.room_permissions.get(room.get("userid", ""))
            if perms is not None:
                answer["permissions"] = perms
            return {"type": "room", "room": answer}
        if t == "ping":
            return {"type": "room", "room": {"version": "1.0", "roomid": body["ping"]["roomid"]}}
        return {"type": "error", "error": {"code": "unknown", "message": "?"}}

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req: h11.Request | None = None
                body = b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(ev, h11.ConnectionClosed):
                        return
                    if isinstance(ev, h11.Request):
                        req = ev
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                assert req is not None
                status, payload = await self._answer(req, body)
                data = json.dumps(payload).encode()
                await stream.send_all(
                    conn.send(h11.Response(status_code=status, headers=[
                        ("Content-Type", "application/json; charset=utf-8"),
                        ("Content-Length", str(len(data)))]))
                    + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage())
                )
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return

    async def _answer(self, req: h11.Request, body: bytes) -> tuple[int, Any]:
        path = req.target.decode()
        self.paths.append(path)
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        if req.method == b"GET" and path == "/ocs/v2.php/cloud/capabilities":
            caps = {"spreed": {"features": self.features, "config": {"signaling": {}}}}
            return 200, ocs({"capabilities": caps})
        if req.method != b"POST" or not path.startswith("/ocs/v2.php/apps/spreed/api/"):
            return 404, ocs(None, 404)
        rnd = headers.get("spreed-signaling-random", "")
        given = headers.get("spreed-signaling-checksum", "")
        want = hmac.new(self.secret, rnd.encode() + body, hashlib.sha256).hexdigest()
        if len(rnd) != 64 or not hmac.compare_digest(want, given) or \
                headers.get("ocs-apirequest") != "true":
            self.bad_checksums += 1
            return 200, ocs({"type": "error", "error": {"code": "invalid_request",
                                                         "message": "The request is invalid"}})
        if self.delay:
            await trio.sleep(self.delay)
        parsed = json.loads(body)
        self.requests.append(parsed)
        return 200, ocs(self.answer(parsed))


def ocs(data: Any, status: int = 200) -> dict[str, Any]:
    return {"ocs": {"meta": {"status": "ok", "statuscode": status, "message": "OK"},
                    "data": data}}


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

    async def hello(self, userid: str = "", url: str | None = None,
                    **params: Any) -> dict[str, Any]:
        url = url if url is not None else (
            self.nextcloud.url + "ocs/v2.php/apps/spreed/api/v3/signaling/backend")
        reply = await self.request({"type": "hello", "hello": {
            "version": "1.0", "auth": {"url": url, "params": {"userid": userid, **params}}}})
        if reply["type"] == "hello":
            self.session_id = reply["hello"]["sessionid"]
            self.resume_id = reply["hello"]["resumeid"]
        return reply

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
