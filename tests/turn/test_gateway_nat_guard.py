"""The 401/438 reflection guard over real sockets: clients sharing one IP (a NAT) and an
attacker flooding from that IP."""

from __future__ import annotations

import os
import socket

import trio

from benchmarks.turnclient import TurnClient
from relay.stun import Message, MessageClass, Method, RequestedTransport
from tests.turn.gateway_harness import (
    PASSWORD,
    USER,
    client,
    config,
    listener_address,
    running,
)

RFC_RTO = 0.5  # RFC 8489 §6.2.1: the initial retransmission timeout
NAT_CLIENTS = 200


async def test_200_clients_behind_one_ip_all_allocate_at_once() -> None:
    # Default guard settings; every client on 127.0.0.1, all starting together, with the
    # RFC's retransmission timing.  None of their challenges may be held back.
    cfg = config(ports=NAT_CLIENTS + 16)
    with trio.fail_after(60):
        async with running(cfg) as rt:
            server = listener_address(rt)
            clients = [TurnClient(server, USER, PASSWORD, rto=RFC_RTO)
                       for _ in range(NAT_CLIENTS)]
            ok: list[bool] = []
            go = trio.Event()

            async def one(c: TurnClient) -> None:
                async with c:
                    await go.wait()
                    await c.allocate(timeout=10.0)
                    ok.append(True)
                    await c.refresh(0)

            async with trio.open_nursery() as nursery:
                for c in clients:
                    nursery.start_soon(one, c)
                await trio.sleep(0.2)
                go.set()
            assert len(ok) == NAT_CLIENTS
            assert rt.stats.drops["ratelimited"] == 0
            assert rt.stats.requests[("allocate", "401")] >= NAT_CLIENTS


async def test_a_flood_from_the_same_ip_does_not_stop_a_refresh_after_438() -> None:
    cfg = config(turn={"unauthorized_ratelimit": 5, "unauthorized_burst": 20})
    with trio.fail_after(30):
        async with running(cfg) as rt:
            server = listener_address(rt)
            async with client(rt) as victim:
                await victim.allocate()
                flooding = trio.Event()

                async def flood() -> None:
                    # 200 tiny unauthenticated Allocates per second from the victim's IP.
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.bind(("127.0.0.1", 0))
                        s.setblocking(False)
                        while True:
                            for _ in range(20):
                                s.sendto(Message(Method.ALLOCATE, MessageClass.REQUEST,
                                                 os.urandom(12), [RequestedTransport(17)]
                                                 ).encode(), server)
                            if rt.stats.drops["ratelimited"] > 0:
                                flooding.set()
                            await trio.sleep(0.1)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flood)
                    await flooding.wait()  # the IP's bucket is empty now
                    refreshed = 0
                    for _ in range(3):
                        # The nonce the victim holds has gone stale: 438, then a refresh.
                        victim.nonce = "stale-" + os.urandom(4).hex()
                        before = rt.stats.requests.get(("refresh", "438"), 0)
                        await victim.refresh(600)
                        assert rt.stats.requests[("refresh", "438")] == before + 1
                        refreshed += 1
                        await trio.sleep(0.2)
                    nursery.cancel_scope.cancel()
            assert refreshed == 3
            assert rt.stats.drops["ratelimited"] > 0
