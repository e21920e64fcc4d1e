"""Brute-force throttling: the sans-IO throttler, the hub's resume and internal hellos, the
room API's BackendRoomAuth, and the metrics (timers on an autojump MockClock)."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest

from relay.config.signaling import SignalingConfig
from relay.signaling import room_api
from relay.signaling.backend import checksum, random_string
from relay.signaling.hub import Hub
from relay.signaling.metrics import SignalingCollector
from relay.signaling.throttle import (
    BACKEND_ROOM_AUTH,
    HELLO_RESUME,
    Throttler,
    client_key,
    delay_for,
)
from tests.signaling.internal_clients import INTERNAL_SECRET
from tests.signaling.test_signaling_hub_timers import (
    URL,
    FakeBackend,
    FakeConn,
    NoCapabilities,
)

MIN = 60.0


def test_delays_double_from_100_ms_up_to_25_s() -> None:
    t = Throttler()
    labels = [t.failed("192.0.2.1", HELLO_RESUME, float(i)) for i in range(20)]
    assert labels[:9] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.0]
    assert set(labels[9:]) == {25.0}
    assert delay_for(100) == 25.0
    assert t.delayed[(HELLO_RESUME, "100")] == 1 and t.delayed[(HELLO_RESUME, "25000")] == 12


def test_blocked_after_ten_failures_within_thirty_minutes() -> None:
    t = Throttler()
    for i in range(9):
        t.failed("192.0.2.1", HELLO_RESUME, i * MIN)
    assert not t.check("192.0.2.1", HELLO_RESUME, 9 * MIN)
    t.failed("192.0.2.1", HELLO_RESUME, 9 * MIN)
    # the 10th most recent failure is at 0: blocked until it is more than 30 min old
    assert t.check("192.0.2.1", HELLO_RESUME, 30 * MIN)
    assert not t.check("192.0.2.1", HELLO_RESUME, 30 * MIN + 1)
    # other actions and other clients are not affected
    assert not t.check("192.0.2.1", BACKEND_ROOM_AUTH, 10 * MIN)
    assert not t.check("192.0.2.2", HELLO_RESUME, 10 * MIN)
    assert t.bruteforce == {HELLO_RESUME: 1}


def test_ipv6_clients_are_grouped_per_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    t = Throttler()
    for i in range(10):
        t.failed(f"2001:db8:1:2::{i + 1}", HELLO_RESUME, 0.0)
    assert t.check("2001:db8:1:2:ffff::9", HELLO_RESUME, 1.0)
    assert not t.check("2001:db8:1:3::1", HELLO_RESUME, 1.0)


def test_failures_are_forgotten_after_twelve_hours() -> None:
    t = Throttler()
    for _ in range(3):
        t.failed("192.0.2.1", HELLO_RESUME, 0.0)
    t.cleanup(12 * 3600.0)
    assert t.tracked == 1
    t.cleanup(12 * 3600.0 + 1)
    assert t.tracked == 0
    assert t.failed("192.0.2.1", HELLO_RESUME, 13 * 3600.0) == 0.1  # starts over


class IpConn(FakeConn):
    def __init__(self, ip: str) -> None:
        super().__init__()
        self.remote_ip = ip


def make_hub(**kw: Any) -> Hub:
    cfg = SignalingConfig(allow_all=True, secret=b"s", **kw)
    return Hub(cfg, FakeBackend(), version="test", capabilities=NoCapabilities())


def resume(resume_id: str, mid: str = "r") -> str:
    return json.dumps({"id": mid, "type": "hello", "hello": {
        "version": "1.0", "resumeid": resume_id}})


def metrics(hub: Hub) -> str:
    reg = CollectorRegistry()
    reg.register(SignalingCollector(hub.stats, hub.gauges))
    return generate_latest(reg).decode()


async def test_bad_resumes_are_delayed_then_refused(autojump_clock: trio.testing.MockClock) -> None:
    hub = make_hub()
    attacker = IpConn("198.51.100.9")
    hub.connect(attacker)
    for i in range(10):
        await hub.receive(attacker, resume(f"guess-{i}", str(i)))
        assert attacker.sent[-1] == {"id": str(i), "type": "error", "error": {
            "code": "no_such_session", "message": "The session to resume does not exist."}}
    await hub.receive(attacker, resume("guess-10", "10"))
    assert attacker.sent[-1]["error"] == {"code": "too_many_requests",
                                          "message": "Too many requests."}
    assert hub.stats.resume_failed_total == 10  # the refused one was not even looked up
    text = metrics(hub)
    for delay in ("100", "200", "400", "800", "1600", "3200", "6400", "12800", "25000"):
        assert f'signaling_throttle_delayed_total{{action="HelloResume",delay="{delay}"}}' \
            in text
    assert 'signaling_throttle_bruteforce_total{action="HelloResume"} 1.0' in text
    # a client from elsewhere still resumes and says hello
    other = IpConn("203.0.113.5")
    hub.connect(other)
    await hub.receive(other, resume("guess-x"))
    assert other.sent[-1]["error"]["code"] == "no_such_session"


async def test_a_delayed_client_does_not_slow_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = make_hub()
    slow = IpConn("198.51.100.9")
    hub.connect(slow)
    for _ in range(8):  # the next failure waits 25.6 s
        hub.throttler.failed("198.51.100.9", HELLO_RESUME, trio.current_time())
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        async def attack() -> None:
            await hub.receive(slow, resume("guess"))
            order.append("attacker answered")

        nursery.start_soon(attack)
        await trio.testing.wait_all_tasks_blocked()
        good = IpConn("203.0.113.5")
        hub.connect(good)
        await hub.receive(good, json.dumps({"id": "1", "type": "hello", "hello": {
            "version": "1.0", "auth": {"url": URL, "params": {"userid": "bob"}}}}))
        assert good.sent[-1]["type"] == "hello"
        order.append("other client served")
    assert order == ["other client served", "attacker answered"]
    assert slow.sent[-1]["error"]["code"] == "no_such_session"


async def test_resuming_an_ended_session_is_not_throttled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = make_hub()
    conn = IpConn("198.51.100.9")
    hub.connect(conn)
    await hub.receive(conn, json.dumps({"id": "1", "type": "hello", "hello": {
        "version": "1.0", "auth": {"url": URL, "params": {"userid": "bob"}}}}))
    resume_id = conn.sent[-1]["hello"]["resumeid"]
    await hub.receive(conn, json.dumps({"id": "2", "type": "bye", "bye": {}}))
    again = IpConn("198.51.100.9")
    hub.connect(again)
    await hub.receive(again, resume(resume_id))
    assert again.sent[-1]["error"]["code"] == "no_such_session"
    assert hub.stats.throttle_delayed == {}


async def test_internal_hellos_with_a_bad_token_are_throttled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = make_hub(internal_secret=INTERNAL_SECRET.encode())
    conn = IpConn("198.51.100.9")
    hub.connect(conn)
    bad = json.dumps({"id": "1", "type": "hello", "hello": {"version": "1.0", "auth": {
        "type": "internal", "params": {"random": "r" * 32, "token": "0" * 64,
                                       "backend": "https://cloud.example.com/"}}}})
    for _ in range(10):
        await hub.receive(conn, bad)
        assert conn.sent[-1]["error"]["code"] == "invalid_token"
    await hub.receive(conn, bad)
    assert conn.sent[-1]["error"]["code"] == "too_many_requests"
    assert hub.stats.throttle_delayed[("HelloInternal", "100")] == 1
    assert hub.stats.throttle_bruteforce == {"HelloInternal": 1}


async def test_room_api_auth_failures_get_429(autojump_clock: trio.testing.MockClock) -> None:
    hub = make_hub()
    body = b'{"type":"message","message":{"data":{}}}'
    rnd = random_string(64)

    def headers(secret: bytes) -> dict[str, str]:
        return {"content-type": "application/json", room_api.HEADER_RANDOM: rnd,
                room_api.HEADER_CHECKSUM: checksum(secret, rnd, body)}

    for _ in range(10):
        answer = await room_api.handle(hub, "r", headers(b"wrong"), body, True, "192.0.2.7")
        assert answer.status == 403
    answer = await room_api.handle(hub, "r", headers(b"s"), body, True, "192.0.2.7")
    assert (answer.status, answer.body) == (429, b"Too many requests\n")
    # another client with the right secret is served
    answer = await room_api.handle(hub, "r", headers(b"s"), body, True, "192.0.2.8")
    assert answer.status == 200
    text = metrics(hub)
    assert 'signaling_throttle_delayed_total{action="BackendRoomAuth",delay="100"} 1.0' in text
    assert 'signaling_throttle_bruteforce_total{action="BackendRoomAuth"} 1.0' in text
