"""A worker's reports to its supervisor come from several tasks (counters, the listener
list, "drained" at SIGTERM): they go out one whole frame at a time.  Two tasks writing to
the stream at once used to crash the worker with trio.BusyResourceError during a drain."""

from __future__ import annotations

import os

import trio

from relay.net.worker import Outbox
from relay.net.workers import _frames


async def test_frames_from_concurrent_tasks_arrive_whole() -> None:
    r, w = os.pipe()
    out = Outbox(trio.lowlevel.FdStream(w))
    inp = trio.lowlevel.FdStream(r)
    big = b"x" * 200_000  # more than a pipe holds: each send_all waits for the reader
    got: list[tuple[str, object]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                async for kind, body in _frames(inp):
                    got.append((kind, body))
                    if len(got) == 20:
                        return

            nursery.start_soon(read)
            async with trio.open_nursery() as senders:
                for i in range(10):
                    senders.start_soon(out.send, "stats", (i, big))
                    senders.start_soon(out.send, "drained", i)
    assert sorted(body for kind, body in got if kind == "drained") == list(range(10))
    assert sorted(body[0] for kind, body in got if kind == "stats") == list(range(10))
    assert all(body[1] == big for kind, body in got if kind == "stats")
    await out.stream.aclose()
    await inp.aclose()
