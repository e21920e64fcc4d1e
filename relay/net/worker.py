"""A TURN worker process: `python -m relay.net.worker`, started by `relay.net.workers`.

Reads its `WorkerSpec` (pickled) from stdin, serves the gateway on the listener sockets it
inherited, reports `("ready", ports)` and then its counters every `REPORT_INTERVAL` on
stdout, and stops on SIGTERM (sent by the supervisor, also when the supervisor gets SIGINT)
or when its stdin closes (the supervisor is gone).  SIGINT itself is ignored.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Awaitable

import trio

from relay.net.gateway import Gateway, WorkerShare, serve_gateway
from relay.net.shared_quota import SharedQuota
from relay.net.workers import REPORT_INTERVAL, WorkerSpec, _len, frame
from relay.turn.stats import TurnStats

log = logging.getLogger("relay.worker")


async def _report(out: trio.lowlevel.FdStream, stats: TurnStats) -> None:
    while True:
        await trio.sleep(REPORT_INTERVAL)
        await out.send_all(frame("stats", stats))


async def _until_stdin_closes(inp: trio.lowlevel.FdStream) -> None:
    while await inp.receive_some(4096):
        pass


async def _until_signalled() -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def _then_cancel(waiting: Awaitable[None], scope: trio.CancelScope) -> None:
    await waiting
    scope.cancel()


async def run(spec: WorkerSpec, inp: trio.lowlevel.FdStream,
              out: trio.lowlevel.FdStream) -> None:
    sockets = {}
    for name, fd in spec.fds.items():
        if name not in sockets:
            sockets[name] = socket.socket(fileno=fd)
    ledger = SharedQuota(spec.quota_fd, spec.workers, spec.index)
    stats = TurnStats()
    share = WorkerShare(sockets=sockets, ledger=ledger, nonce_key=spec.nonce_key)
    async with trio.open_nursery() as nursery:
        gw: Gateway = await nursery.start(
            lambda task_status: serve_gateway(spec.config, stats, spec.own_addresses,
                                              shared=share, task_status=task_status))
        await out.send_all(frame("ready", dict(gw.bound_ports)))
        nursery.start_soon(_report, out, stats)
        async with trio.open_nursery() as until:
            until.start_soon(_then_cancel, _until_stdin_closes(inp), until.cancel_scope)
            until.start_soon(_then_cancel, _until_signalled(), until.cancel_scope)
        nursery.cancel_scope.cancel()
    await out.send_all(frame("stats", stats))


def _read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = os.read(fd, n - len(data))
        if not more:
            raise SystemExit("relay.net.worker: stdin closed before the spec (run by relay)")
        data += more
    return data


def main() -> None:
    # Ctrl-C reaches the whole process group: the supervisor stops the workers (SIGTERM);
    # a worker leaving on its own would be taken for a crash and restarted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    (n,) = _len.unpack(_read_exactly(0, 4))
    kind, spec = pickle.loads(_read_exactly(0, n))
    assert kind == "spec" and isinstance(spec, WorkerSpec)
    logging.basicConfig(level=spec.loglevel, stream=sys.stderr,
                        format=f"%(asctime)s worker {spec.index} %(name)s %(levelname)s "
                               "%(message)s")
    inp = trio.lowlevel.FdStream(os.dup(0))
    out = trio.lowlevel.FdStream(os.dup(1))

    async def go() -> None:
        try:
            await run(spec, inp, out)
        except (BrokenPipeError, trio.BrokenResourceError):
            pass  # the supervisor is gone

    trio.run(go)


if __name__ == "__main__":
    main()
