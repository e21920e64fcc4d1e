"""Interop: headless Chromium relays WebRTC through relay's TURN-over-UDP gateway.

Two RTCPeerConnections in one page, both with `iceTransportPolicy: 'relay'` and relay as
their only ICE server, so every packet between them crosses relay twice (client -> relay
socket -> the other allocation's relay socket -> client).  A DataChannel echoes messages,
a second one carries 4 MiB in bulk and a fake-camera video track flows; the page reports
the selected candidate pair from getStats, and relay's own counters must show the
allocations, permissions, channels and cluster traffic, with nothing dropped as malformed.

Chromium is driven with Playwright's sync API (in a worker thread) using the system
Chromium: Playwright's own browser downloads are not used.  The test skips when either is
missing (RELAY_TEST_CHROMIUM may name another Chromium binary); `tests/run.sh` installs
both where it may.  A run takes about 2 s per case on loopback.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from relay import app
from relay.config import Config
from relay.net import gateway as gateway_mod
from relay.stun import attribute_type
from relay.turn.server import METHOD_NAMES, TurnServer

USER, PASSWORD, REALM = "browser", "webrtc-pw", "relay.test"
MESSAGES = 50
BULK_BYTES = 4 * 1024 * 1024
STEP_MS = 10_000  # the page's bound for each of its steps (camera, open, echoes, bulk...)
BROWSER_TIMEOUT_S = 30.0  # Playwright's bound for launching and for each call
TEST_TIMEOUT_S = 60.0  # everything, relay included
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
PAGE_SCRIPT = Path(__file__).with_name("two_peers.js")
PAGE_URL = "http://localhost/relay-interop"


def _chromium() -> str | None:
    env = os.environ.get("RELAY_TEST_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    # Debian's package installs it here; PATH may not include /usr/bin in odd setups.
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _has_routed_address(family: socket.AddressFamily) -> bool:
    """Whether the host has a non-loopback address of `family` with a route (a UDP
    connect() to a documentation address sends nothing).  Chromium's WebRTC ignores
    loopback interfaces: without such an address it gathers no candidate at all, even for a
    TURN server on loopback."""
    target = "192.0.2.1" if family == socket.AF_INET else "2001:db8::1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            return not ipaddress.ip_address(s.getsockname()[0]).is_loopback
    except OSError:
        return False


def _listen_param(address: str, family: socket.AddressFamily) -> Any:
    version = "IPv4" if family == socket.AF_INET else "IPv6"
    return pytest.param(address, marks=pytest.mark.skipif(
        not _has_routed_address(family),
        reason=f"no routed non-loopback {version} address: Chromium's WebRTC ignores "
               "loopback interfaces and would gather no candidate"))


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the Python package playwright is not installed "
                              "(pip install -e '.[test]')"),
    pytest.mark.skipif(CHROMIUM is None,
                       reason="no Chromium on PATH (Debian: apt-get install chromium)"),
]


def _config(address: str, min_port: int, max_port: int) -> Config:
    return Config.from_mapping({
        "version": "v1",
        "admin": {"healthcheck_endpoint": ""},  # no admin sockets: only the TURN listener
        "auth": {"type": "static", "realm": REALM,
                 "credentials": {"username": USER, "password": PASSWORD}},
        "listeners": [{"name": "udp", "protocol": "TURN-UDP", "address": address,
                       "port": 0, "routes": ["loop"]}],
        # Both peers' relayed addresses are on loopback: the operator admits it explicitly.
        "clusters": [{"name": "loop", "type": "STATIC", "endpoints": ["127.0.0.1/32"]}],
        # One process: the `wire` fixture watches the gateway's own methods in this process.
        "turn": {"workers": 1, "min_port": min_port, "max_port": max_port},
    })


class Wire:
    """What the browser sent relay: STUN messages by (method, class) with the attribute
    types seen, Send indications and Data indications forwarded."""

    def __init__(self) -> None:
        self.messages: Counter[tuple[str, int]] = Counter()
        self.attributes: dict[str, set[int]] = {}
        self.clients: set[str] = set()
        self.refresh_lifetimes: list[int] = []
        self.send_indications = 0
        self.data_indications = 0


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    from relay.stun import Lifetime, Method, decode

    seen = Wire()
    handle = TurnServer.handle

    def recording_handle(self: TurnServer, lis: Any, client: Any, data: bytes,
                         *clocks: Any) -> bytes | None:
        try:
            msg = decode(data)
        except Exception:
            seen.messages[("undecodable", -1)] += 1
        else:
            name = METHOD_NAMES.get(msg.method, f"0x{msg.method:03x}")  # type: ignore[call-overload]
            seen.messages[(name, int(msg.cls))] += 1
            seen.attributes.setdefault(name, set()).update(
                attribute_type(a) for a in msg.attributes)
            seen.clients.add(client[0])
            lifetime = msg.get(Lifetime)
            if msg.method == Method.REFRESH and lifetime is not None:
                seen.refresh_lifetimes.append(lifetime.seconds)
        return handle(self, lis, client, data, *clocks)

    send_indication = getattr(gateway_mod.Gateway, "_send_indication", None)

    def counting_send(self: Any, *args: Any) -> None:
        seen.send_indications += 1
        assert send_indication is not None
        send_indication(self, *args)

    data_indication = getattr(gateway_mod, "data_indication", None)

    def counting_data(*args: Any) -> Any:
        seen.data_indications += 1
        assert data_indication is not None
        return data_indication(*args)

    # Observation only: if the gateway's internals are renamed, the counts stay 0.
    monkeypatch.setattr(TurnServer, "handle", recording_handle)
    monkeypatch.setattr(gateway_mod.Gateway, "_send_indication", counting_send, raising=False)
    monkeypatch.setattr(gateway_mod, "data_indication", counting_data, raising=False)
    return seen


def _run_browser(turn_url: str) -> dict[str, Any]:
    """In a worker thread: launch Chromium, run the two-peer page, return its summary."""
    from playwright.sync_api import sync_playwright

    opts = {
        "iceServers": [{"urls": turn_url,
                        "username": USER, "credential": PASSWORD}],
        "messages": MESSAGES,
        "bulkBytes": BULK_BYTES,
        "video": True,
        "minVideoBytes": 20_000,
        "stepMs": STEP_MS,
    }
    console: list[str] = []
    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=CHROMIUM_ARGS, timeout=BROWSER_TIMEOUT_S * 1000)
        try:
            page = browser.new_page()
            page.set_default_timeout(BROWSER_TIMEOUT_S * 1000)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            launched = time.monotonic() - t0
            # getUserMedia needs a secure context, which about:blank is not: the page is
            # served to the browser by Playwright itself under a localhost URL (no socket
            # is opened for it).  The script falls back to a canvas track without one.
            page.route(PAGE_URL, lambda route: route.fulfill(
                status=200, content_type="text/html",
                body="<!doctype html><title>relay interop</title>"))
            page.goto(PAGE_URL)
            summary: dict[str, Any] = page.evaluate(PAGE_SCRIPT.read_text(), opts)
            summary["console"] = console
            summary["timing"] = {"launch_s": round(launched, 2),
                                 "total_s": round(time.monotonic() - t0, 2)}
            summary["browser_version"] = browser.version
            return summary
        finally:
            browser.close()


@pytest.mark.parametrize("listen", [_listen_param("127.0.0.1", socket.AF_INET),
                                    _listen_param("::1", socket.AF_INET6)])
async def test_chromium_relays_datachannel_and_video_through_relay(
    wire: Wire, listen: str
) -> None:
    base = 42000 + (os.getpid() % 50) * 200  # spread concurrent runs over the range
    cfg = _config(listen, base, base + 199)
    stats: Any
    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            runtime: Any = await nursery.start(app.run, cfg)
            port = runtime.health.listeners["udp"].port
            assert port
            stats = runtime.stats
            host = f"[{listen}]" if ":" in listen else listen
            turn_url = f"turn:{host}:{port}?transport=udp"
            summary = await trio.to_thread.run_sync(_run_browser, turn_url,
                                                    abandon_on_cancel=True)
            # pc.close() sends Refresh with LIFETIME 0: relay deletes both allocations.
            for _ in range(150):  # 3 s at most
                if not stats.allocations_active:
                    break
                await trio.sleep(0.02)
            active_after_close = stats.allocations_active
            nursery.cancel_scope.cancel()

    print(_report(summary, stats, wire))  # shown on failure, or with `pytest -s`

    # The browser's side.
    assert summary["received"] == [f"msg-{i}" for i in range(MESSAGES)], summary["log"]
    assert summary["echoes"] == [f"echo:msg-{i}" for i in range(MESSAGES)], summary["log"]
    assert summary["bulk"]["bytes"] == BULK_BYTES, summary["bulk"]
    for side in ("a", "b"):
        cands = summary["candidates"][side]
        assert cands and all(" typ relay" in c for c in cands), cands
        pair = summary["pairs"][side]
        assert pair is not None, summary["log"]
        assert pair["local"]["type"] == "relay", pair
        assert pair["remote"]["type"] == "relay", pair
        assert pair["local"]["relayProtocol"] == "udp", pair
        assert pair["local"]["address"] == "127.0.0.1", pair
        assert base <= pair["local"]["port"] <= base + 199, pair
    video = summary["video"]
    assert video is not None and video["bytesReceived"] > 20_000, video
    assert video["framesDecoded"] > 0, video

    # relay's side.
    req = stats.requests
    assert stats.allocations_total >= 2, req
    assert req.get(("allocate", "success"), 0) >= 2, req
    assert req.get(("create_permission", "success"), 0) >= 2, req
    assert req.get(("channel_bind", "success"), 0) >= 2, req
    # Only the first, credential-less Allocate of each client may be refused (401 challenge).
    refused = {k: v for k, v in req.items() if k[1] != "success"}
    assert set(refused) <= {("allocate", "401")}, refused
    traffic = stats.clusters["loop"].traffic
    assert traffic.rx_packets > 0 and traffic.tx_packets > 0, vars_of(traffic)
    # Every message, its echo and the bulk data crossed relay: out of one relay socket,
    # into the other.
    assert traffic.tx_packets >= 2 * MESSAGES and traffic.rx_packets >= 2 * MESSAGES
    assert traffic.tx_bytes >= BULK_BYTES and traffic.rx_bytes >= BULK_BYTES
    # Chromium binds channels right after its first Send indications: the bulk of the
    # client -> peer data was ChannelData, not Send indications.
    assert traffic.tx_packets - wire.send_indications >= 2 * MESSAGES, vars_of(traffic)
    assert stats.drops["malformed"] == 0, stats.drops
    # ICE races permissions: a peer's first check can reach a relay socket before the other
    # side's CreatePermission for it is done (RFC 8656 §9 says drop it; ICE retransmits).
    assert stats.drops["no_permission"] <= 4, stats.drops
    assert sum(stats.drops.values()) == stats.drops["no_permission"], stats.drops
    assert sum(stats.peer_refusals.values()) == 0, stats.peer_refusals
    assert req.get(("refresh", "success"), 0) >= 2, req
    assert active_after_close == 0, "pc.close() did not delete the allocations"


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__}


def _report(summary: dict[str, Any], stats: Any, wire: Wire) -> str:
    """The test's findings, shown with `pytest -s` (the interop notes come from here)."""
    from relay.stun import AttrType

    def attr_name(code: int) -> str:
        try:
            return AttrType(code).name
        except ValueError:
            return f"0x{code:04X}"

    lines = [f"Chromium {summary['browser_version']}: {summary['timing']}",
             f"selected pair a: {summary['pairs']['a']}",
             f"selected pair b: {summary['pairs']['b']}",
             f"video: {summary['video']}, bulk: {summary['bulk']}",
             f"STUN messages (method, class): {dict(wire.messages)}"]
    for method, codes in sorted(wire.attributes.items()):
        lines.append(f"  {method}: {sorted(attr_name(c) for c in codes)}")
    lines += [f"client addresses: {sorted(wire.clients)}, "
              f"Refresh LIFETIMEs: {wire.refresh_lifetimes}",
              f"Send indications: {wire.send_indications}, "
              f"Data indications: {wire.data_indications}",
              f"requests: {stats.requests}",
              f"cluster traffic: {vars_of(stats.clusters['loop'].traffic)}",
              f"listener traffic: {vars_of(stats.listeners['udp'].traffic)}",
              f"drops: {stats.drops}", "page log:", *summary["log"]]
    return "\n".join(lines)
