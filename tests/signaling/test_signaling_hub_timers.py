"""The hub without sockets: timers on a MockClock, routing filters, metrics snapshot."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest

from relay.config.signaling import BackendConfig, SignalingConfig
from relay.signaling.capabilities import CapabilitiesError
from relay.signaling.hub import Hub
from relay.signaling.metrics import SignalingCollector


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def send_text(self, text: str) -> None:
        if self.closed is None:
            self.sent.append(json.loads(text))

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def take(self) -> list[dict[str, Any]]:
        out, self.sent = self.sent, []
        return out


class FakeBackend:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def request(self, backend: BackendConfig, url: str, payload: dict[str, Any]) -> Any:
        self.requests.append((url, payload))
        if payload["type"] == "auth":
            userid = payload["auth"]["params"].get("userid", "")
            return {"type": "auth", "auth": {"version": "1.0", "userid": userid}}
        if payload["type"] == "room":
            return {"type": "room", "room": {"version": "1.0", "roomid": payload["room"]["roomid"],
                                             "properties": {"p": 1}}}
        return {}


URL = "https://cloud.example.com/ocs/v2.php/apps/spreed/api/v3/signaling/backend"


class NoCapabilities:
    """A capabilities source that knows nothing (no request leaves the test)."""

    async def get(self, url: str) -> Any:
        raise CapabilitiesError("invalid_url", "no capabilities in this test")

    def invalidate(self, url: str) -> bool:
        return False


def make_hub() -> tuple[Hub, FakeBackend]:
    cfg = SignalingConfig(allow_all=True, secret=b"s")
    backend = FakeBackend()
    return Hub(cfg, backend, version="test", capabilities=NoCapabilities()), backend


async def hello(hub: Hub, userid: str = "") -> tuple[FakeConn, dict[str, Any]]:
    conn = FakeConn()
    hub.connect(conn)
    await hub.receive(conn, json.dumps({"id": "1", "type": "hello", "hello": {
        "version": "1.0", "auth": {"url": URL, "params": {"userid": userid}}}}))
    msgs = conn.take()
    assert msgs[0]["type"] == "welcome"
    return conn, msgs[1]["hello"]


async def test_hello_timeout(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    hub, _ = make_hub()
    await nursery.start(hub.run)
    conn = FakeConn()
    hub.connect(conn)
    await trio.sleep(1.5)
    assert conn.closed is None
    await trio.sleep(1.0)
    assert conn.sent[-1] == {"type": "bye", "bye": {"reason": "hello_timeout"}}
    assert conn.closed is not None


async def test_failed_hello_rearms_the_timer(autojump_clock: trio.testing.MockClock,
                                            nursery: trio.Nursery) -> None:
    hub, _ = make_hub()
    await nursery.start(hub.run)
    conn = FakeConn()
    hub.connect(conn)
    await trio.sleep(1.5)
    await hub.receive(conn, '{"id":"x","type":"room","room":{}}')
    assert conn.sent[-1]["error"]["code"] == "hello_expected"
    await trio.sleep(1.2)  # 2.7 s after connect, 1.2 s after the error
    assert conn.closed is None
    await trio.sleep(1.5)
    assert conn.closed is not None


async def test_anonymous_session_must_join_a_room(autojump_clock: trio.testing.MockClock,
                                                  nursery: trio.Nursery) -> None:
    hub, _ = make_hub()
    await nursery.start(hub.run)
    anon, h = await hello(hub, "")
    assert h["userid"] == ""
    user, _ = await hello(hub, "alice")
    anon2, _ = await hello(hub, "")
    await hub.receive(anon2, '{"id":"2","type":"room","room":{"roomid":"r","sessionid":"t"}}')
    await trio.sleep(9.5)
    assert anon.closed is None
    await trio.sleep(1.0)
    assert anon.sent[-1] == {"type": "bye", "bye": {"reason": "room_join_timeout"}}
    assert anon.closed is not None and user.closed is None and anon2.closed is None
    assert h["sessionid"] not in hub.sessions
    assert len(hub.sessions) == 2


async def test_session_expires_30s_after_disconnect(autojump_clock: trio.testing.MockClock,
                                                    nursery: trio.Nursery) -> None:
    hub, backend = make_hub()
    await nursery.start(hub.run)
    conn, h = await hello(hub, "alice")
    await hub.receive(conn, '{"id":"2","type":"room","room":{"roomid":"r","sessionid":"t"}}')
    hub.disconnect(conn)
    await trio.sleep(29)
    # still resumable
    conn2 = FakeConn()
    hub.connect(conn2)
    await hub.receive(conn2, json.dumps({"type": "hello", "hello": {
        "version": "1.0", "resumeid": h["resumeid"]}}))
    assert conn2.sent[-1]["hello"]["sessionid"] == h["sessionid"]
    assert hub.stats.resume_total == {("compat", "client"): 1}
    hub.disconnect(conn2)
    await trio.sleep(31)
    assert h["sessionid"] not in hub.sessions
    assert hub.rooms == {}
    # the room was left at Nextcloud
    assert backend.requests[-1][1]["room"]["action"] == "leave"
    conn3 = FakeConn()
    hub.connect(conn3)
    await hub.receive(conn3, json.dumps({"id": "r", "type": "hello", "hello": {
        "version": "1.0", "resumeid": h["resumeid"]}}))
    assert conn3.sent[-1]["error"]["code"] == "no_such_session"
    assert hub.stats.resume_failed_total == 1


async def test_room_pings_reach_the_backend(autojump_clock: trio.testing.MockClock,
                                            nursery: trio.Nursery) -> None:
    hub, backend = make_hub()
    await nursery.start(hub.run)
    conn, _ = await hello(hub, "alice")
    await hub.receive(conn, '{"id":"2","type":"room","room":{"roomid":"r","sessionid":"t"}}')
    await trio.sleep(10.5)
    pings = [p for _, p in backend.requests if p["type"] == "ping"]
    assert pings == [{"type": "ping", "ping": {"version": "1.0", "roomid": "r",
                                               "entries": [{"sessionid": "t", "userid": "alice"}]}}]


async def test_call_recipients_only_reach_sessions_in_the_call() -> None:
    hub, _ = make_hub()
    conns = []
    for name in ("a", "b", "c"):
        conn, h = await hello(hub, name)
        await hub.receive(conn, json.dumps({"type": "room", "room": {
            "roomid": "r", "sessionid": f"t-{name}"}}))
        conns.append((conn, h["sessionid"]))
    for conn, _ in conns:
        conn.take()
    (a, sa), (b, sb), (c, sc) = conns
    assert hub.set_in_call("compat", "r", sb, 7)
    assert not hub.set_in_call("compat", "nope", sb, 1)
    await hub.receive(a, '{"type":"message","message":{"recipient":{"type":"call"},"data":"x"}}')
    assert b.take() == [{"type": "message", "message": {
        "sender": {"type": "call", "sessionid": sa, "userid": "a"}, "data": "x"}}]
    assert c.take() == [] and a.take() == []
    assert hub.stats.call_rooms_total == {"compat": 1}
    hub.set_in_call("compat", "r", sc, 1)
    assert hub.stats.call_rooms_total == {"compat": 1}
    assert hub.stats.call_sessions_total == {("compat", "client"): 2}
    reg = CollectorRegistry()
    reg.register(SignalingCollector(hub.stats, hub.gauges))
    text = generate_latest(reg).decode()
    assert 'signaling_call_sessions{backend="compat",clienttype="client",room="r"} 2.0' in text
    assert 'signaling_call_rooms_total{backend="compat"} 1.0' in text


async def test_unknown_message_types_are_counted_under_a_fixed_label() -> None:
    hub, _ = make_hub()
    conn, _ = await hello(hub, "a")
    for t in ("evil-1", "evil-2", "transient"):
        await hub.receive(conn, json.dumps({"type": t, t: {}}))
    # only the transient message is read (and is missing its type)
    assert conn.take() == [{"type": "error", "error": {
        "code": "invalid_format", "message": "Invalid data format."}}]
    # a valid internal message from a normal client is ignored
    await hub.receive(conn, json.dumps({"type": "internal", "internal": {
        "type": "incall", "incall": {"incall": 1}}}))
    assert conn.take() == []
    assert hub.stats.server_messages == {"hello": 1, "unknown": 2, "transient": 1,
                                         "internal": 1}


async def test_cross_backend_messages_are_dropped() -> None:
    b1 = BackendConfig("one", ("https://one.example/",), b"s1")
    b2 = BackendConfig("two", ("https://two.example/",), b"s2")
    hub = Hub(SignalingConfig(backends=(b1, b2)), FakeBackend(), version="t")
    c1 = FakeConn()
    hub.connect(c1)
    await hub.receive(c1, json.dumps({"type": "hello", "hello": {"version": "1.0", "auth": {
        "url": "https://one.example/", "params": {"userid": "u"}}}}))
    c2 = FakeConn()
    hub.connect(c2)
    await hub.receive(c2, json.dumps({"type": "hello", "hello": {"version": "1.0", "auth": {
        "url": "https://two.example/index.php", "params": {"userid": "u"}}}}))
    s1 = c1.take()[-1]["hello"]["sessionid"]
    s2 = c2.take()[-1]["hello"]["sessionid"]
    assert hub.sessions[s1].backend.id == "one" and hub.sessions[s2].backend.id == "two"
    await hub.receive(c1, json.dumps({"type": "message", "message": {
        "recipient": {"type": "session", "sessionid": s2}, "data": 1}}))
    await hub.receive(c2, json.dumps({"type": "message", "message": {
        "recipient": {"type": "user", "userid": "u"}, "data": 1}}))
    assert c1.take() == [] and c2.take() == []


async def test_disconnect_during_hello_registers_nothing() -> None:
    hub, _ = make_hub()
    conn = FakeConn()
    hub.connect(conn)

    async def slow_request(*args: Any) -> Any:
        hub.disconnect(conn)  # the socket goes away while Nextcloud answers
        return {"type": "auth", "auth": {"userid": "u"}}

    hub.backend.request = slow_request  # type: ignore[method-assign]
    await hub.receive(conn, json.dumps({"type": "hello", "hello": {"version": "1.0", "auth": {
        "url": URL, "params": {}}}}))
    assert hub.sessions == {}
