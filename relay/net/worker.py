"""A TURN worker process: `python -m relay.net.worker`, started by `relay.net.workers`.

Reads its `WorkerSpec` (pickled) from stdin, serves the gateway on the listener sockets it
inherited, reports `("ready", ports)` and then its counters every `REPORT_INTERVAL` on
stdout, and the names of the listeners it serves whenever they change (`("listeners",
names)`: a removed listener stays until it drained).  Later messages on stdin:
`("config", Config)` reloads its gateway (`Gateway.reconfigure`), with the listener sockets
the supervisor sent just before on the descriptor channel (`WorkerSpec.channel_fd`): new
or re-bound listeners are served on them, the rest are closed.  `("drain", grace)` drains
it: new Allocates refused (508), the allocations relay on until they end or `grace`
seconds pass, then it reports `("drained", cut)` and goes on refusing until the supervisor
stops it (when every worker has drained), so a client the kernel sends to it hears 508
rather than nothing.  SIGTERM drains the same way (a service manager may signal the whole
group).  When its stdin closes (the supervisor stops it, or is gone) it stops at once and
exits 0.  SIGINT and SIGHUP are ignored: Ctrl-C and a reload reach the supervisor, which
tells the workers.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import socket
import sys

import trio

from relay.errors import ConfigError
from relay.fdlimit import raise_nofile_limit
from relay.net.gateway import Gateway, WorkerShare, serve_gateway
from relay.net.shared_quota import SharedQuota
from relay.net.workers import (
    REPORT_INTERVAL,
    WorkerSpec,
    _frames,
    _len,
    frame,
    receive_sockets,
)
from relay.turn.stats import TurnStats

log = logging.getLogger("relay.worker")


class Outbox:
    """The worker's stdout to the supervisor, one frame at a time: the counter reports,
    the listener list, "ready" and "drained" come from different tasks, and a stream
    sends for one task at once."""

    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self.stream = stream
        self.lock = trio.Lock()

    async def send(self, kind: str, body: object) -> None:
        async with self.lock:
            await self.stream.send_all(frame(kind, body))


async def _report(out: Outbox, stats: TurnStats, gw: Gateway) -> None:
    """Counters every `REPORT_INTERVAL`; the listeners served (draining ones included)
    whenever they change, so the supervisor knows when a removed one is closed everywhere."""
    serving = set(gw.listener_configs)
    while True:
        await trio.sleep(REPORT_INTERVAL)
        now = set(gw.listener_configs)
        if now != serving:
            serving = now
            await out.send("listeners", sorted(now))
        await out.send("stats", stats)


POLL = 0.2  # a drain checks for the last allocation this often


async def _commands(inp: trio.lowlevel.FdStream, out: Outbox, gw: Gateway,
                    share: WorkerShare, channel: socket.socket,
                    stop: trio.CancelScope, nursery: trio.Nursery) -> None:
    """The supervisor's messages, until stdin closes (then stop at once).  A config comes
    after its listener sockets on the descriptor channel: the gateway takes those of new
    or re-bound listeners, the others are closed here."""
    async for kind, body in _frames(inp):
        if kind == "config":
            handed = await receive_sockets(channel)
            if handed is None:
                break  # the supervisor is gone
            share.sockets.clear()
            share.sockets.update(handed)
            try:
                changes = gw.reconfigure(body)
            except (OSError, ConfigError) as exc:  # checked by the supervisor first
                log.error("reload refused, the running config stays: %s", exc)
            else:
                log.info("config reloaded: %s",
                         "; ".join(changes) if changes else "no listener changed")
            finally:
                for sock in share.sockets.values():  # not needed: its listener kept its own
                    sock.close()
                share.sockets.clear()
        elif kind == "drain":
            nursery.start_soon(_drain, gw, float(body), out)
    stop.cancel()


async def _drain(gw: Gateway, grace: float, out: Outbox) -> None:
    """Refuse new allocations; once the last one ended or after `grace` seconds (the rest
    cut), tell the supervisor."""
    if gw.server.draining:
        return
    gw.drain()
    before = gw.allocations
    log.info("draining: %d allocation(s) keep relaying", before)
    with trio.move_on_after(grace):
        while True:
            if not gw.allocations:
                break
            await trio.sleep(POLL)
    cut = gw.allocations
    gw.perform(gw.server.close_all(trio.current_time()))
    log.info("drained: %d of %d allocation(s) cut", cut, before)
    await out.send("drained", cut)


async def _on_sigterm(gw: Gateway, grace: float, out: Outbox,
                      nursery: trio.Nursery) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            nursery.start_soon(_drain, gw, grace, out)


async def run(spec: WorkerSpec, inp: trio.lowlevel.FdStream,
              out: Outbox) -> None:
    sockets = {name: socket.socket(fileno=fd) for name, fd in spec.fds.items()}
    channel = socket.socket(fileno=spec.channel_fd)
    channel.setblocking(False)
    ledger = SharedQuota(spec.quota_fd, spec.workers, spec.index)
    stats = TurnStats()
    share = WorkerShare(sockets=sockets, ledger=ledger, nonce_key=spec.nonce_key,
                        workers=spec.workers)
    async with trio.open_nursery() as nursery:
        gw: Gateway = await nursery.start(
            lambda task_status: serve_gateway(spec.config, stats, spec.own_addresses,
                                              shared=share, task_status=task_status))
        # as the main process: what start-up made (numba's compiled loop among it) is
        # never garbage, and a full collection must not walk it every time
        gc.collect()
        gc.freeze()
        await out.send("ready", dict(gw.bound_ports))
        nursery.start_soon(_report, out, stats, gw)
        async with trio.open_nursery() as until:
            grace = spec.config.shutdown.grace_period
            until.start_soon(_commands, inp, out, gw, share, channel, until.cancel_scope,
                             until)
            until.start_soon(_on_sigterm, gw, grace, out, until)
        nursery.cancel_scope.cancel()
    await out.send("stats", stats)


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
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come over stdin
    (n,) = _len.unpack(_read_exactly(0, 4))
    kind, spec = pickle.loads(_read_exactly(0, n))
    assert kind == "spec" and isinstance(spec, WorkerSpec)
    logging.basicConfig(level=spec.loglevel, stream=sys.stderr,
                        format=f"%(asctime)s worker {spec.index} %(name)s %(levelname)s "
                               "%(message)s")
    raise_nofile_limit()  # this process's own limit and descriptor reserve
    gc.set_threshold(50_000, 50, 10)  # as the main process (relay/__main__.py says why)
    inp = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))

    async def go() -> None:
        try:
            await run(spec, inp, Outbox(stdout))
        except (BrokenPipeError, trio.BrokenResourceError):
            pass  # the supervisor is gone

    trio.run(go)


if __name__ == "__main__":
    main()
