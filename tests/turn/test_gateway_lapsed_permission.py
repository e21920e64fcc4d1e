"""A channel outlives its permission (300 s vs 600 s by default): once the permission lapses,
ChannelData from the client is no longer relayed to the peer until a CreatePermission or
ChannelBind refresh renews it."""

from __future__ import annotations

import pytest
import trio

from tests.turn.gateway_harness import client, config, drain, running, udp_sink, until

# every test here on the batched and on the plain datagram path
pytestmark = pytest.mark.usefixtures("datagram_io")


async def test_channel_data_needs_a_live_permission() -> None:
    cfg = config(turn={"permission_lifetime": 1, "channel_lifetime": 600})
    with trio.fail_after(20), udp_sink() as sink:
        peer = sink.getsockname()
        got: list[bytes] = []

        def arrived(payload: bytes) -> bool:
            got.extend(drain(sink))
            return payload in got

        async with running(cfg) as rt:
            async with client(rt) as c:
                await c.allocate()
                await c.channel_bind(0x4001, peer)
                await c.send_channel(0x4001, b"before")
                await until(lambda: arrived(b"before"), "relayed while permitted")
                await until(lambda: rt.stats.permissions_active == 0, "permission expiry")
                assert rt.stats.channels_active == 1  # the channel itself is still bound
                drops = rt.stats.drops
                before = drops["no_permission"]
                await c.send_channel(0x4001, b"after")
                await until(lambda: drops["no_permission"] == before + 1, "drop counted")
                await c.channel_bind(0x4001, peer)  # renews the permission
                await c.send_channel(0x4001, b"again")
                await until(lambda: arrived(b"again"), "relayed after the refresh")
                assert b"after" not in got
