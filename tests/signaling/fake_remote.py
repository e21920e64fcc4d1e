"""A small REMOTE signaling server for federation tests (trio-websocket, 127.0.0.1 only).

It answers like spreed-signaling does for a federation client: welcome, hello v2 with
`auth.type:"federation"` (token "bad-token" → `invalid_token`), resume by resume id
(`no_such_session` once forgotten), room join/leave with the join event, and records
every frame it got. Tests push events into the live connection and drop it.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import attrs
import trio
import trio_websocket

FEATURES = ["federation", "hello-v2", "incall-all", "welcome"]
OTHER_SESSION = "remote-other-session"
ROOM_PROPERTIES = {"name": "federated room"}


@attrs.define(eq=False)
class FakeRemote:
    header_features: list[str] = attrs.Factory(lambda: list(FEATURES))
    welcome_features: list[str] = attrs.Factory(lambda: list(FEATURES))
    answer_hello: bool = True
    ssl_context: ssl.SSLContext | None = None  # serve wss with this
    port: int = 0
    received: list[dict[str, Any]] = attrs.Factory(list)
    hellos: list[dict[str, Any]] = attrs.Factory(list)
    sessions: dict[str, str] = attrs.Factory(dict)  # resume id -> session id
    connections: int = 0
    _ws: trio_websocket.WebSocketConnection | None = None
    _counter: int = 0
    _changed: trio.Event = attrs.Factory(trio.Event)

    @property
    def signaling_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"

    async def start(self, nursery: trio.Nursery) -> None:
        server = await nursery.start(
            trio_websocket.serve_websocket, self._handler, "127.0.0.1", 0, self.ssl_context
        )
        self.port = server.port

    def _record(self, msg: dict[str, Any]) -> None:
        self.received.append(msg)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, pred: Any) -> dict[str, Any]:
        """The first recorded frame matching `pred` (waits for it)."""
        while True:
            for msg in self.received:
                if pred(msg):
                    return msg
            await self._changed.wait()

    async def push(self, msg: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_message(json.dumps(msg))

    async def drop(self) -> None:
        """Close the current connection from the remote side."""
        assert self._ws is not None
        await self._ws.aclose()

    def forget_sessions(self) -> None:
        self.sessions.clear()

    async def _handler(self, request: trio_websocket.WebSocketRequest) -> None:
        header = ", ".join(self.header_features).encode()
        ws = await request.accept(extra_headers=[(b"X-Spreed-Signaling-Features", header)])
        self.connections += 1
        self._ws = ws
        own = ""
        try:
            await ws.send_message(
                json.dumps(
                    {
                        "type": "welcome",
                        "welcome": {"version": "fake", "features": self.welcome_features},
                    }
                )
            )
            while True:
                msg = json.loads(await ws.get_message())
                self._record(msg)
                kind = msg.get("type")
                mid = msg.get("id")
                if kind == "hello":
                    self.hellos.append(msg)
                    if not self.answer_hello:
                        continue
                    answer, own = self._hello(msg)
                    await ws.send_message(json.dumps(answer))
                elif kind == "room":
                    room_id = msg["room"]["roomid"]
                    reply: dict[str, Any] = {"type": "room", "room": {"roomid": room_id}}
                    if room_id:
                        reply["room"]["properties"] = ROOM_PROPERTIES
                    if mid:
                        reply["id"] = mid
                    await ws.send_message(json.dumps(reply))
                    if room_id:
                        event = {
                            "type": "event",
                            "event": {
                                "target": "room",
                                "type": "join",
                                "join": [
                                    {"sessionid": OTHER_SESSION, "userid": "other"},
                                    {"sessionid": own, "userid": "fed@local", "federated": True},
                                ],
                            },
                        }
                        await ws.send_message(json.dumps(event))
                elif kind == "bye":
                    await ws.send_message(
                        json.dumps({"type": "bye", **({"id": mid} if mid else {})})
                    )
                    await ws.aclose()
                    return
        except trio_websocket.ConnectionClosed:
            return

    def _hello(self, msg: dict[str, Any]) -> tuple[dict[str, Any], str]:
        hello = msg["hello"]
        mid = msg["id"]
        resume = hello.get("resumeid")
        if resume:
            own = self.sessions.get(resume, "")
            if not own:
                return _error(mid, "no_such_session", "The session to resume does not exist."), ""
            return _hello_answer(mid, own, resume), own
        if hello.get("auth", {}).get("params", {}).get("token") == "bad-token":
            return _error(mid, "invalid_token", "The token could not be authenticated."), ""
        self._counter += 1
        own, resume = f"remote-own-{self._counter}", f"resume-{self._counter}"
        self.sessions[resume] = own
        return _hello_answer(mid, own, resume), own


def _error(mid: str, code: str, message: str) -> dict[str, Any]:
    return {"id": mid, "type": "error", "error": {"code": code, "message": message}}


def _hello_answer(mid: str, own: str, resume: str) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "hello",
        "hello": {
            "version": "2.0",
            "sessionid": own,
            "resumeid": resume,
            "userid": "fed@local",
            "server": {"version": "fake", "features": FEATURES},
        },
    }
