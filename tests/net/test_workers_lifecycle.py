"""Reload and drain with TURN worker processes (`turn.workers: 2`), as an operator does
them: `python -m relay -c FILE`, real signals to the supervisor.

- SIGHUP rotating the shared secret: every worker takes it (new clients spread over both
  workers allocate with the new secret, the old one is refused), and an allocation relaying
  a steady stream through the reload loses no packet.
- SIGTERM: `/ready` is 503 at once, every worker refuses new Allocates (508) and keeps
  relaying for the allocation it holds until the client deletes it; then the workers exit 0
  without being restarted and relay exits 0.

Every subprocess and every wait is bounded; no test asserts a duration.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import trio

from benchmarks.turnclient import TurnClient
from tests.test_cli import Running, write
from tests.test_reload_drain_cli import (
    NEW_SECRET,
    OLD_SECRET,
    PACKETS,
    _ready_status,
    assert_no_loss,
    credential,
    drain_while_relaying,
    listener_port,
    refused_allocate,
    relaying,
    render,
    stream,
)
from tests.turn.gateway_harness import free_port_range

CLIENTS = 16  # new clients after the reload: the kernel spreads them over both workers


def _workers_yaml(text: str) -> str:
    return text.replace("turn: {min_port:", "turn: {workers: 2, min_port:")


def _health(out: str) -> str:
    m = re.search(r"^health: http://127\.0\.0\.1:(\d+)/live", out, re.MULTILINE)
    assert m is not None, out
    return f"http://127.0.0.1:{m.group(1)}"


def _status(base: str) -> dict[str, object]:
    with urllib.request.urlopen(base + "/status", timeout=5) as resp:
        doc = json.loads(resp.read())
    assert isinstance(doc, dict)
    return doc


def _worker_allocations(base: str) -> list[int]:
    workers = _status(base)["workers"]
    assert isinstance(workers, list)
    return [int(w["allocations"]) for w in workers]


async def _until(check: Callable[[], bool], what: str) -> None:
    """Poll `check` (blocking, in a thread) until it holds; `what` names it on timeout."""
    with trio.move_on_after(10.0):
        while True:
            if await trio.to_thread.run_sync(check):
                return
            await trio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sighup_reaches_both_workers_and_an_allocation_relays_on(tmp_path: Path) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    health = "http://127.0.0.1:0"
    path = write(tmp_path, _workers_yaml(render(OLD_SECRET, [("udp-a", 0)], ports, health)))
    r = Running(path)
    try:
        out = r.read_until(b"relay is ready")
        port_a = listener_port(out, "udp-a")
        base = _health(out)

        async def scenario() -> tuple[set[int], set[int], list[int], list[int], str]:
            with trio.fail_after(90):
                async with relaying(port_a) as (c, _echo):
                    before = await stream(c, 0, PACKETS)
                    write(tmp_path, _workers_yaml(render(
                        NEW_SECRET, [("udp-a", port_a)], ports, health)))
                    during: set[int] = set()
                    async with trio.open_nursery() as inner:

                        async def run_stream() -> None:
                            during.update(await stream(c, PACKETS, PACKETS))

                        inner.start_soon(run_stream)
                        await trio.sleep(0.5)
                        r.proc.send_signal(signal.SIGHUP)
                        log = await trio.to_thread.run_sync(r.read_err_until,
                                                            b"config reloaded")
                    # the allocation's own refresh still authenticates (key kept)
                    await c.refresh(600)
                    for k in (0, 1):  # both workers log their reload
                        marker = f"worker {k} relay.worker INFO config reloaded"
                        if marker not in log:
                            log += await trio.to_thread.run_sync(r.read_err_until,
                                                                 marker.encode())
                    # old secret refused, new secret allocates, on both workers
                    refused = []
                    async with contextlib.AsyncExitStack() as stack:
                        for i in range(CLIENTS):
                            refused.append(await refused_allocate(port_a, OLD_SECRET, f"o{i}"))
                            u_new, p_new = credential(NEW_SECRET, f"new{i}")
                            fresh = await stack.enter_async_context(
                                TurnClient(("127.0.0.1", port_a), u_new, p_new, rto=0.1))
                            await fresh.allocate()
                        await trio.sleep(0.6)  # two worker reports
                        spread = await trio.to_thread.run_sync(_worker_allocations, base)
            return before, during, refused, spread, log

        before, during, refused, spread, log = trio.run(scenario)
        rc, err = r.stop(signal.SIGINT)
    finally:
        r.kill()
    assert_no_loss(before, during)
    assert refused == [401] * CLIENTS
    # 1 + CLIENTS allocations, and each worker holds some of the new ones
    assert sum(spread) == 1 + CLIENTS and all(n >= 1 for n in spread), spread
    assert "2 TURN worker(s) reloaded" in log
    assert rc == 0 and "Traceback" not in err, err


def test_sigterm_drains_every_worker_then_they_and_relay_exit_0(tmp_path: Path) -> None:
    ports = free_port_range(64, ("127.0.0.1",))
    path = write(tmp_path, _workers_yaml(render(OLD_SECRET, [("udp-a", 0)], ports,
                                                health="http://127.0.0.1:0")))
    r = Running(path)
    try:
        out = r.read_until(b"relay is ready")
        port_a = listener_port(out, "udp-a")
        base = _health(out)

        async def scenario() -> tuple[set[int], int, list[int]]:
            with trio.fail_after(90):
                async with relaying(port_a) as (c, _echo):
                    await _until(lambda: _ready_status(base + "/ready") == 200, "ready")
                    await _until(lambda: sum(_worker_allocations(base)) == 1,
                                 "the allocation reported")
                    # 8 late clients: the kernel spreads them over both workers
                    return await drain_while_relaying(r, c, port_a, base + "/ready", late=8)

        after, ready, refused = trio.run(scenario)
        rc, err = r.wait("relay did not exit once its last allocation was deleted")
    finally:
        r.kill()
    assert ready == 503
    assert refused == [508] * 8
    assert after == set(range(PACKETS))
    assert rc == 0, err
    for k in (0, 1):
        assert re.search(rf"TURN worker {k} \(pid \d+\) drained, exited with code 0", err), err
    assert "restarting" not in err
    assert "drained: 1 allocation(s) ended" in err
    assert "Traceback" not in err
