"""Relay sockets are read from one epoll set: a deleted allocation's socket leaves the set
before it closes, so a new allocation that gets the same fd number receives its own
traffic and the old client none."""

from __future__ import annotations

import pytest
import trio

from tests.turn.gateway_harness import client, config, drain, running, udp_sink, until

# every test here on the batched and on the plain datagram path
pytestmark = pytest.mark.usefixtures("datagram_io")


async def test_new_allocation_on_a_reused_fd_gets_its_own_traffic() -> None:
    cfg = config()
    with trio.fail_after(20), udp_sink() as peer:
        peer_addr = peer.getsockname()
        async with running(cfg) as rt:
            async with client(rt) as old, client(rt) as new:
                await old.allocate()
                await old.create_permission(peer_addr)
                old_relay = old.relayed
                await old.refresh(0)  # deleted: its relay socket is closed
                await until(lambda: rt.stats.allocations_active == 0, "old allocation gone")

                await new.allocate()
                await new.channel_bind(0x4000, peer_addr)
                assert new.relayed is not None and old_relay is not None
                # Peer -> new relay address -> new client, as ChannelData.
                for _ in range(5):
                    peer.sendto(b"to-new", new.relayed)
                    with trio.move_on_after(0.3):
                        kind, meta, data = await new.recv(timeout=10)
                        assert (kind, meta, data) == ("channel", 0x4000, b"to-new")
                        break
                else:
                    raise AssertionError("the new allocation never received its peer's data")
                # The old client hears nothing (its allocation and socket are gone).
                with trio.move_on_after(0.2):
                    got = await old.recv(timeout=10)
                    raise AssertionError(f"deleted allocation received {got!r}")
                assert drain(peer) == []
