"""A mock Nextcloud for the signaling server: capabilities and the signed backend endpoint.

It serves Talk's capabilities (`features`, and `hello-v2-token-key` when `token_key` is
set, so tests sign hello v2 tokens as Talk does), checks `Spreed-Signaling-Checksum` like
Nextcloud, answers `auth` (the `userid` param
becomes the user; `fail` / `garbage` params give an error / a wrong answer), `room` (the
room ids `test-invalid-room` / `test-not-a-room` fail; `room_permissions[userid]`, when
set, is the answer's `permissions`, as Talk sends them) and `ping`. Used by the signaling
tests and by `signaling_load.py`; loopback only. Virtual sessions: a `room` request naming
an actor in `fail_actors` fails, `session` requests get Talk's answer to an unknown type.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import attrs
import h11
import trio


@attrs.define
class MockNextcloud:
    """Answers like Nextcloud's signaling backend; records every request it accepted.

    Serve it with `trio.serve_tcp(mock.handle, 0, host="127.0.0.1")` and set `port`.
    """

    secret: bytes
    features: list[str] = attrs.Factory(lambda: ["signaling-v3"])
    port: int = 0
    requests: list[dict[str, Any]] = attrs.Factory(list)
    paths: list[str] = attrs.Factory(list)
    bad_checksums: int = 0
    room_permissions: dict[str, Any] = attrs.Factory(dict)  # user id -> `permissions` value
    delay: float = 0.0
    fail_actors: set[str] = attrs.Factory(set)  # `room` requests with this actorid fail
    record: bool = True  # keep every accepted request (long load runs turn this off)
    accepted: int = 0
    # hello v2: the public key Talk publishes as `config.signaling.hello-v2-token-key`
    # (PEM, or base64 of a raw Ed25519 key); None = hello v2 not configured.
    token_key: str | None = None
    capabilities_fetches: int = 0

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
            if room.get("actorid") in self.fail_actors:
                return {"type": "error", "error": {"code": "no_such_user",
                                                    "message": "Unknown actor"}}
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
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer(self, req: h11.Request, body: bytes) -> tuple[int, Any]:
        path = req.target.decode()
        self.paths.append(path)
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        if req.method == b"GET" and path == "/ocs/v2.php/cloud/capabilities":
            self.capabilities_fetches += 1
            signaling: dict[str, Any] = {}
            if self.token_key is not None:
                signaling["hello-v2-token-key"] = self.token_key
            caps = {"spreed": {"features": self.features, "config": {"signaling": signaling}}}
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
        self.accepted += 1
        if self.record:
            self.requests.append(parsed)
        return 200, ocs(self.answer(parsed))


def ocs(data: Any, status: int = 200) -> dict[str, Any]:
    return {"ocs": {"meta": {"status": "ok", "statuscode": status, "message": "OK"},
                    "data": data}}
