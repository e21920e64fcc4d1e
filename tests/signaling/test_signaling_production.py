"""Signaling in production: TURN REST credentials (end to end at relay's own gateway),
GeoIP country counts, stale room-API requests, batched room pings, HTTP details."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from benchmarks.turnclient import TurnClient, TurnError
from relay.__main__ import setup_logging
from relay.config import AuthConfig
from relay.config.signaling import TurnRestConfig, parse_signaling
from relay.errors import ConfigError
from relay.signaling import turn_credentials as tc
from relay.signaling.capabilities import Capabilities, Lookup
from relay.signaling.geoip import GeoIP
from relay.signaling.hub import Hub
from relay.signaling.room_ping import ping_requests
from tests.signaling.conftest import Server, raw_http, signaling_config
from tests.signaling.test_signaling_hub_timers import URL, FakeBackend, FakeConn, NoCapabilities
from tests.signaling.test_signaling_throttle import IpConn, make_hub, metrics
from tests.turn.gateway_harness import REALM, config, listener_address, running

TURN_SECRET = "turn-shared-secret"
API_KEY = "the-api-key"

# --- TURN REST credentials ---------------------------------------------------------------


def test_turn_credentials_answers() -> None:
    cfg = TurnRestConfig(API_KEY, TURN_SECRET.encode(), ("turn:192.0.2.1:3478",))
    bad = tc.handle("service=stun&api=" + API_KEY, cfg, None, 1000.0)
    assert (bad.status, bad.body) == (400, b"Invalid service and/or key sent.\n")
    assert tc.handle("service=turn", cfg, None, 1000.0).status == 400
    wrong = tc.handle("service=turn&api=nope", cfg, None, 1000.0)
    assert (wrong.status, wrong.body) == (403, b"Not allowed to access this service.\n")
    assert tc.handle("service=turn&key=x", None, None, 1000.0).status == 403
    empty = attrs.evolve(cfg, servers=())
    none = tc.handle(f"service=turn&api={API_KEY}", empty, tc.TurnServers(), 1000.0)
    assert (none.status, none.body) == (404, b"No TURN servers available.\n")
    ok = tc.handle(f"service=turn&key={API_KEY}&username=bob", cfg, None, 1000.0)
    assert ok.status == 200 and ok.content_type.startswith(b"application/json")
    assert ok.body.endswith(b"\n")
    doc = json.loads(ok.body)
    assert doc["username"] == f"{1000 + 86400}:bob" and doc["ttl"] == 86400
    assert doc["uris"] == ["turn:192.0.2.1:3478"]
    mac = hmac.new(TURN_SECRET.encode(), doc["username"].encode(), hashlib.sha1).digest()
    assert doc["password"] == base64.b64encode(mac).decode()
    anon = json.loads(tc.handle(f"service=turn&api={API_KEY}", cfg, None, 1.0).body)
    assert len(anon["username"].split(":", 1)[1]) == tc.RANDOM_USERNAME_LENGTH
    # the URIs of relay's own listeners
    own = tc.TurnServers(tuple(tc.own_uris([
        ("TURN-UDP", "192.0.2.1", 3478), ("TURN-TCP", "2001:db8::1", 3478),
        ("TURN-TLS", "turn.example.com", 5349), ("TURN-DTLS", "x", 1)])))
    assert own.uris == ("turn:192.0.2.1:3478?transport=udp",
                        "turn:[2001:db8::1]:3478?transport=tcp",
                        "turns:turn.example.com:5349?transport=tcp")
    doc = json.loads(tc.handle(f"service=turn&api={API_KEY}", empty, own, 1.0).body)
    assert doc["uris"] == list(own.uris)


def test_turn_config_keys() -> None:
    base = {"listen": "127.0.0.1:0", "backend": {"allowall": True, "secret": "s"}}
    cfg = parse_signaling({**base, "turn": {"apikey": "k", "secret": "t",
                                            "servers": "turn:a:1?transport=udp, turns:b:2"}},
                          "signaling")
    assert cfg.turn == TurnRestConfig("k", b"t", ("turn:a:1?transport=udp", "turns:b:2"))
    assert parse_signaling(base, "signaling").turn is None
    with pytest.raises(ConfigError, match=r"signaling\.turn.apikey"):
        parse_signaling({**base, "turn": {"secret": "t"}}, "signaling")
    with pytest.raises(ConfigError, match=r"signaling.turn.servers\[0\]"):
        parse_signaling({**base, "turn": {"apikey": "k", "secret": "t",
                                          "servers": ["stun:a:1"]}}, "signaling")


async def test_credentials_from_signaling_work_at_relays_own_gateway() -> None:
    sig = parse_signaling({"listen": "127.0.0.1:0",
                           "backend": {"allowall": True, "secret": "s"},
                           "turn": {"apikey": API_KEY, "secret": TURN_SECRET}}, "signaling")
    cfg = attrs.evolve(config(), signaling=sig,
                       auth=AuthConfig("ephemeral", REALM, (), (TURN_SECRET,)))
    with trio.fail_after(20):
        async with running(cfg) as rt:
            host, port = rt.http["signaling"]
            udp_host, udp_port = listener_address(rt)
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as c:
                r = await c.get("/turn/credentials",
                                params={"service": "turn", "api": API_KEY, "username": "u1"})
                assert r.status_code == 200
                doc = r.json()
                r2 = await c.get("/turn/credentials", params={"service": "turn", "api": "bad"})
                assert r2.status_code == 403
            assert doc["uris"] == [f"turn:{udp_host}:{udp_port}?transport=udp"]
            async with TurnClient((udp_host, udp_port), doc["username"], doc["password"]) as t:
                await t.allocate()
                assert t.relayed is not None
            user, password = tc.credentials("u1", TURN_SECRET.encode(), time.time() - 2 * tc.TTL)
            async with TurnClient((udp_host, udp_port), user, password) as t:
                with pytest.raises(TurnError) as err:
                    await t.allocate()
                assert err.value.code == 401


# --- GeoIP ---------------------------------------------------------------------------------


def write_mmdb(path: Path) -> str:
    w = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    w.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "GB"}})
    w.insert_network(IPSet(["2001:db8::/32"]), {"country": {"iso_code": "DE"}})
    w.insert_network(IPSet(["198.51.100.0/24"]), {"city": {"name": "no country"}})
    w.to_db_file(str(path))
    return str(path)


def test_geoip_lookup_order(tmp_path: Path) -> None:
    db = write_mmdb(tmp_path / "c.mmdb")
    geo = GeoIP(((ipaddress.ip_network("127.0.0.1/32"), "FR"),
                 (ipaddress.ip_network("81.2.69.128/25"), "IE")), db)
    assert geo.lookup("81.2.69.1") == "GB"
    assert geo.lookup("81.2.69.200") == "IE"  # overrides first
    assert geo.lookup("2001:db8::5") == "DE"
    assert geo.lookup("127.0.0.1") == "FR"
    assert geo.lookup("127.0.0.2") == "loopback" and geo.lookup("::1") == "loopback"
    assert geo.lookup("198.51.100.1") == "unknown-country"
    assert geo.lookup("8.8.8.8") == "unknown-country"
    assert geo.lookup("not-an-ip") == "no-country"
    geo.close()


def test_geoip_config_keys(tmp_path: Path) -> None:
    db = write_mmdb(tmp_path / "c.mmdb")
    base = {"listen": "127.0.0.1:0", "backend": {"allowall": True, "secret": "s"}}
    cfg = parse_signaling({**base, "geoip": {"url": f"file://{db}"},
                           "geoip-overrides": {"10.0.0.0/8": "de", "192.0.2.1": "US"}},
                          "signaling")
    assert cfg.geoip_file == db
    assert [(str(n), c) for n, c in cfg.geoip_overrides] == [
        ("10.0.0.0/8", "DE"), ("192.0.2.1/32", "US")]
    with pytest.raises(ConfigError, match=r"signaling\.geoip.license"):
        parse_signaling({**base, "geoip": {"license": "key"}}, "signaling")
    with pytest.raises(ConfigError, match=r"signaling\.geoip.url"):
        parse_signaling({**base, "geoip": {"url": str(tmp_path / "missing.mmdb")}}, "signaling")
    with pytest.raises(ConfigError, match=r"signaling\.geoip-overrides.nonsense"):
        parse_signaling({**base, "geoip-overrides": {"nonsense": "DE"}}, "signaling")
    with pytest.raises(ConfigError, match=r"signaling\.geoip-overrides.10.0.0.1"):
        parse_signaling({**base, "geoip-overrides": {"10.0.0.1": "loopback"}}, "signaling")


async def test_countries_are_counted_per_new_session(tmp_path: Path) -> None:
    geo = GeoIP(((ipaddress.ip_network("127.0.0.1/32"), "FR"),), write_mmdb(tmp_path / "c.mmdb"))
    hub = make_hub()
    hub.geoip = geo
    for n, ip in enumerate(["81.2.69.9", "81.2.69.10", "2001:db8::1", "127.0.0.1", "127.0.0.5",
                            "8.8.8.8"]):
        conn = IpConn(ip)
        hub.connect(conn)
        await hub.receive(conn, json.dumps({"id": "1", "type": "hello", "hello": {
            "version": "1.0", "auth": {"url": URL, "params": {"userid": f"u{n}"}}}}))
        assert conn.sent[-1]["type"] == "hello"
    assert hub.stats.countries == {"GB": 2, "DE": 1, "FR": 1}
    assert 'signaling_client_countries_total{country="GB"} 2.0' in metrics(hub)


async def test_countries_over_the_websocket_with_an_override(
    make_server: Any, nextcloud: Any
) -> None:
    raw = signaling_config(nextcloud)
    raw["signaling"]["geoip-overrides"] = {"127.0.0.1": "DE"}  # loopback is never counted
    with trio.fail_after(10):
        srv: Server = await make_server(raw)
        c = await srv.client()
        await c.hello("alice")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as h:
            text = (await h.get("/metrics")).text
        assert 'signaling_client_countries_total{country="DE"} 1.0' in text


# --- room API ordering, room pings --------------------------------------------------------


async def test_an_older_room_request_than_one_applied_is_dropped() -> None:
    hub = make_hub()
    conn = FakeConn()
    hub.connect(conn)
    await hub.receive(conn, json.dumps({"id": "1", "type": "hello", "hello": {
        "version": "1.0", "auth": {"url": URL, "params": {"userid": "a"}}}}))
    await hub.receive(conn, json.dumps({"id": "2", "type": "room", "room": {"roomid": "r"}}))
    conn.take()
    bid = hub.compat_backend.id

    def update(props: dict[str, Any], received: int) -> None:
        hub.publish_backend_room_event(bid, "r", {"type": "update", "received": received,
                                                  "update": {"properties": props}})

    update({"v": 2}, 2000)
    update({"v": 1}, 1000)  # older than the one applied: ignored
    update({"v": 3}, 3000)
    rooms = [m["room"]["properties"] for m in conn.take() if m["type"] == "room"]
    assert rooms == [{"v": 2}, {"v": 3}]
    # another type has its own order; a request without stamp gets one now (newest)
    hub.publish_backend_room_event(bid, "r", {"type": "update", "update": {"properties":
                                                                           {"v": 4}}})
    assert [m["room"]["properties"] for m in conn.take() if m["type"] == "room"] == [{"v": 4}]


def test_ping_batching() -> None:
    rooms = [("r1", [{"sessionid": "a"}, {"sessionid": "b"}]), ("r2", [{"sessionid": "c"}])]
    assert [p["ping"]["roomid"] for p in ping_requests(rooms, None)] == ["r1", "r2"]
    assert [p["ping"]["roomid"] for p in ping_requests(rooms, 0)] == ["r1", "r2"]
    combined = ping_requests(rooms, 2)
    assert [(p["ping"]["roomid"], [e["sessionid"] for e in p["ping"]["entries"]])
            for p in combined] == [("", ["a", "b"]), ("", ["c"])]


class LimitCapabilities(NoCapabilities):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.asked: list[str] = []

    async def get(self, url: str) -> Any:
        self.asked.append(url)
        doc = {"spreed": {"features": [], "config": {"signaling": {
            "session-ping-limit": self.limit}}}}
        return Lookup(Capabilities(doc["spreed"]), False)


async def test_room_pings_are_combined_per_backend_by_the_limit(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    from relay.config.signaling import SignalingConfig
    backend = FakeBackend()
    caps = LimitCapabilities(2)
    hub = Hub(SignalingConfig(allow_all=True, secret=b"s"), backend, version="t",
              capabilities=caps)
    await nursery.start(hub.run)
    for n, room in enumerate(["r1", "r1", "r2"]):
        conn = FakeConn()
        hub.connect(conn)
        await hub.receive(conn, json.dumps({"id": "1", "type": "hello", "hello": {
            "version": "1.0", "auth": {"url": URL, "params": {"userid": f"u{n}"}}}}))
        await hub.receive(conn, json.dumps({"id": "2", "type": "room", "room": {
            "roomid": room, "sessionid": f"t{n}"}}))
    await trio.sleep(10.5)
    pings = [p["ping"] for _, p in backend.requests if p["type"] == "ping"]
    assert [(p["roomid"], sorted(e["sessionid"] for e in p["entries"])) for p in pings] == [
        ("", ["t0", "t1"]), ("", ["t2"])]
    assert caps.asked == [URL]


# --- HTTP details ---------------------------------------------------------------------------



async def test_date_head_and_reason_phrases(server: Server) -> None:
    with trio.fail_after(10):
        get = await raw_http(server.port, b"GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close\r\n\r\n")
        head_text, _, body = get.partition(b"\r\n\r\n")
        assert head_text.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\ndate: " in head_text.lower() and b" GMT" in head_text
        assert body.startswith(b'{"nextcloud-spreed-signaling"')
        head = await raw_http(server.port, b"HEAD /api/v1/welcome HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\n\r\n")
        head_only, _, rest = head.partition(b"\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200 OK\r\n") and rest == b""
        assert f"content-length: {len(body)}".encode() in head_only.lower()
        missing = await raw_http(server.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
        post = await raw_http(server.port, b"POST /api/v1/welcome HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
        assert b"allow: get, head" in post.lower()


def test_nextcloud_requests_are_not_logged_at_info() -> None:
    root = logging.getLogger()
    saved = root.level, logging.getLogger("httpx").level, logging.getLogger("httpcore").level
    try:
        setup_logging("all:INFO")
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert logging.getLogger("relay.signaling").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved[0])
        logging.getLogger("httpx").setLevel(saved[1])
        logging.getLogger("httpcore").setLevel(saved[2])


async def test_throttle_metrics_show_up_with_traffic(server: Server) -> None:
    from tests.signaling.conftest import OTHER_SECRET
    from tests.signaling.test_signaling_backend_room_api import post
    with trio.fail_after(10):
        c = await server.client()
        await c.send({"id": "r", "type": "hello", "hello": {"version": "1.0",
                                                           "resumeid": "not-a-session"}})
        assert (await c.recv())["error"]["code"] == "no_such_session"
        r = await post(server, "r1", {"type": "message", "message": {"data": {}}},
                       secret=OTHER_SECRET)
        assert r.status_code == 403
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as h:
            text = (await h.get("/metrics")).text
        assert 'signaling_throttle_delayed_total{action="HelloResume",delay="100"} 1.0' in text
        assert 'signaling_throttle_delayed_total{action="BackendRoomAuth",delay="100"} 1.0' \
            in text
