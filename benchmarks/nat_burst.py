"""Clients behind one NAT: N TURN clients on one source IP (127.0.0.1) all allocate at once.

This is what an office network does at 9:00 and what relay's 401/438 reflection guard must
survive: every client's first Allocate gets a 401, so N challenges leave one IP within a
moment.  Each client uses RFC 8489's retransmission timing (RTO 0.5 s, doubling, 7 sends,
so a transaction gives up after 39.5 s) and counts the datagrams it sent per transaction.

    python -m benchmarks.nat_burst                       # relay, default guard, 200 clients
    python -m benchmarks.nat_burst --server coturn       # the same against coturn
    python -m benchmarks.nat_burst --root /tmp/old-tree  # relay from another source tree

It prints the conditions, how many clients allocated, the most sends any transaction took
("tries": 1 = first send answered) and the time until the last client had its allocation.
Loopback only; bounded by the RFC's 39.5 s per transaction.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import trio

from benchmarks.report import raise_nofile
from benchmarks.servers import PASSWORD, USERNAME, ServerProcess, run_coturn, run_relay
from benchmarks.turnclient import TurnClient, TurnError
from relay.stun import Message, MessageClass, Method, RequestedTransport

RTO = 0.5  # RFC 8489 §6.2.1
RC = 7  # sends per transaction
GIVE_UP = RTO * (2 ** (RC - 1) - 1) + RTO * 16  # 39.5 s: the RFC's Rc/Rm schedule


class CountingClient(TurnClient):
    """A TurnClient that records how many datagrams each transaction needed."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sends = 0
        self.tries: list[int] = []

    async def _transact(self, data: bytes, transaction_id: bytes, timeout: float,  # noqa: ASYNC109
                        retransmit: bool) -> Any:
        before = self.sends
        try:
            return await super()._transact(data, transaction_id, timeout, retransmit)
        finally:
            self.tries.append(self.sends - before)

    async def send_raw(self, data: bytes) -> None:
        self.sends += 1
        await super().send_raw(data)


async def flood(server: tuple[str, int], rate: int) -> None:
    """Unauthenticated 20-byte Allocates from the same IP at `rate` per second."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        while True:
            for _ in range(max(1, rate // 10)):
                msg = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12),
                              [RequestedTransport(17)]).encode()
                with contextlib.suppress(OSError):
                    sock.sendto(msg, server)
            await trio.sleep(0.1)


async def burst(server: tuple[str, int], n: int, flood_rate: int = 0,
                flood_lead: float = 10.0) -> dict[str, Any]:
    clients = [CountingClient(server, USERNAME, PASSWORD, rto=RTO) for _ in range(n)]
    done: list[float] = []
    failed: list[str] = []
    go = trio.Event()

    async def one(c: CountingClient) -> None:
        await go.wait()
        t0 = trio.current_time()
        try:
            await c.allocate(timeout=GIVE_UP + 1)
            done.append(trio.current_time() - t0)
        except (TurnError, trio.TooSlowError) as exc:
            failed.append(type(exc).__name__)

    async with contextlib.AsyncExitStack() as stack:
        for c in clients:
            await stack.enter_async_context(c)
        async with trio.open_nursery() as outer:
            if flood_rate:
                outer.start_soon(flood, server, flood_rate)
                await trio.sleep(flood_lead)  # the attacker's bucket is empty by now
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for c in clients:
                    nursery.start_soon(one, c)
                await trio.sleep(0.1)
                go.set()
            wall = time.perf_counter() - start
            outer.cancel_scope.cancel()
        for c in clients:
            if c.relayed is not None:
                with contextlib.suppress(TurnError, trio.TooSlowError):
                    await c.refresh(0, timeout=5.0)
    tries = [t for c in clients for t in c.tries]
    return {
        "clients": n,
        "allocated": len(done),
        "failed": len(failed),
        "max_tries": max(tries) if tries else 0,
        "transactions_retransmitted": sum(1 for t in tries if t > 1),
        "p50_s": statistics.median(done) if done else None,
        "last_s": max(done) if done else None,
        "wall_s": wall,
    }


@contextlib.contextmanager
def server_for(args: argparse.Namespace) -> Iterator[ServerProcess]:
    if args.server == "coturn":
        with run_coturn() as s:
            yield s
    else:
        with run_relay(root=args.root, guard=True) as s:
            yield s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", choices=("relay", "coturn"), default="relay")
    p.add_argument("--root", default=None, help="relay source tree (default: this checkout)")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--flood", type=int, default=0, metavar="RATE",
                   help="also flood unauthenticated Allocates from 127.0.0.1 at RATE/s, "
                        "starting 10 s before the clients")
    args = p.parse_args(argv)
    raise_nofile()
    with server_for(args) as server:
        print(f"# nat_burst: {args.clients} clients on 127.0.0.1 allocate at once against "
              f"{args.server}{' from ' + args.root if args.root else ''}; RFC 8489 timing "
              f"(RTO {RTO}s, Rc {RC}); flood {args.flood}/s; {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}",
              flush=True)
        out = trio.run(burst, server.address, args.clients, args.flood)
    for k, v in out.items():
        print(f"{k}: {round(v, 3) if isinstance(v, float) else v}")
    return 0 if out["allocated"] == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
