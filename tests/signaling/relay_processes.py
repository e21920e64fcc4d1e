"""Real relay processes (`python -m relay`) for the signaling tests, each with its own
mock Nextcloud on 127.0.0.1: start, stop, connect a client."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from benchmarks.mock_nextcloud import MockNextcloud
from tests.signaling.conftest import TALK_PATH, Client

__all__ = [
    "TALK_PATH",
    "Federated",
    "RelayProcess",
    "Relays",
    "connect",
    "federated_pair",
    "is_event",
    "join_ids",
    "relays_for",
    "serve_nextcloud",
    "start_relay",
    "stop_relay",
]

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^signaling: ws://127\.0\.0\.1:(\d+)/spreed$", re.MULTILINE)

CONFIG = """\
version: v1
admin: {{metrics_endpoint: "", healthcheck_endpoint: "", loglevel: "all:INFO"}}
auth: {{type: none}}
signaling:
  http: {{listen: "127.0.0.1:0"}}
  backend:
    backends:
      - {{id: {id}, urls: ["{url}"], secret: "{secret}"}}
  federation: {{timeout: 5}}
"""


@attrs.define(eq=False)
class RelayProcess:
    proc: trio.Process
    out: Path
    port: int = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/spreed"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


async def start_relay(tmp: Path, name: str, nc: MockNextcloud) -> RelayProcess:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(CONFIG.format(id=name, url=nc.url, secret=nc.secret.decode()))
    out = tmp / f"{name}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    with out.open("wb") as sink:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "relay", "-c", str(cfg)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
        )
    relay = RelayProcess(proc, out)
    while True:
        text = out.read_text(errors="replace")
        m = READY.search(text)
        if m is not None and "relay is ready" in text:
            relay.port = int(m.group(1))
            return relay
        if proc.poll() is not None:
            raise AssertionError(f"relay {name} exited:\n{text}")
        await trio.sleep(0.05)


async def stop_relay(relay: RelayProcess) -> None:
    if relay.proc.returncode is None:
        relay.proc.terminate()
        with trio.move_on_after(10) as scope:
            await relay.proc.wait()
        if scope.cancelled_caught:
            relay.proc.kill()
            await relay.proc.wait()


async def serve_nextcloud(nursery: trio.Nursery, nc: MockNextcloud) -> MockNextcloud:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, nc.handle, 0, host="127.0.0.1"))
    nc.port = listeners[0].socket.getsockname()[1]
    return nc


async def connect(nursery: trio.Nursery, relay: RelayProcess, nc: MockNextcloud) -> Client:
    ws = await trio_websocket.connect_websocket_url(nursery, relay.ws_url,
                                                    message_queue_size=1024)
    c = Client(ws, nc)
    welcome = await c.recv()
    assert welcome["type"] == "welcome"
    assert {"hello-v2", "federation"} <= set(welcome["welcome"]["features"])
    return c


def is_event(m: dict[str, Any], kind: str) -> bool:
    return m.get("type") == "event" and m["event"].get("type") == kind


def join_ids(m: dict[str, Any]) -> list[str]:
    return [e["sessionid"] for e in m["event"]["join"]] if is_event(m, "join") else []


@attrs.define(eq=False)
class Relays:
    """Relay processes started for a test, and the nursery their clients live in."""

    nursery: trio.Nursery
    tmp: Path
    running: list[RelayProcess] = attrs.Factory(list)

    async def start(self, name: str, nc: MockNextcloud) -> RelayProcess:
        relay = await start_relay(self.tmp, name, nc)
        self.running.append(relay)
        return relay


@asynccontextmanager
async def relays_for(tmp: Path, *nextclouds: MockNextcloud) -> AsyncIterator[Relays]:
    """Serve the mock Nextclouds on 127.0.0.1; on the way out stop every relay started
    (even when the test failed), then check each stopped cleanly and logged no traceback."""
    async with trio.open_nursery() as nursery:
        for nc in nextclouds:
            await serve_nextcloud(nursery, nc)
        relays = Relays(nursery, tmp)
        try:
            yield relays
        finally:
            with trio.CancelScope(shield=True):
                for relay in relays.running:
                    await stop_relay(relay)
        for relay in relays.running:
            assert relay.proc.returncode == 0
            assert "Traceback" not in relay.out.read_text(errors="replace")
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class Federated:
    """Two Nextclouds, each with its relay: L (local) and R (remote, federation-v2)."""

    relays: Relays
    local_nc: MockNextcloud
    remote_nc: MockNextcloud
    relay_l: RelayProcess
    relay_r: RelayProcess


@asynccontextmanager
async def federated_pair(tmp: Path, remote_key: str,
                         local_key: str | None = None) -> AsyncIterator[Federated]:
    """Relay L for a local Nextcloud and relay R for a remote one that publishes
    `remote_key` (hello v2) and lists `federation-v2`; `local_key` for L's Nextcloud."""
    local_nc = MockNextcloud(b"local-secret", token_key=local_key)
    remote_nc = MockNextcloud(b"remote-secret", features=["signaling-v3", "federation-v2"],
                              token_key=remote_key)
    async with relays_for(tmp, local_nc, remote_nc) as relays:
        relay_l = await relays.start("local", local_nc)
        relay_r = await relays.start("remote", remote_nc)
        yield Federated(relays, local_nc, remote_nc, relay_l, relay_r)
