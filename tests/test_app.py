"""relay.app.run: the start order's promises, end to end on loopback.

The gateway starts last and is told where the HTTP parts bound, so its peer policy refuses
them; the listeners are marked bound in the health state once the gateway reports their
ports, and unbound after it closed them.
"""

from __future__ import annotations

import attrs
import pytest
import trio

from benchmarks.turnclient import TurnError
from relay import app
from relay.config.signaling import parse_signaling
from tests.turn.gateway_harness import client, config, listener_address, running


async def test_signaling_port_is_refused_as_a_peer_and_reported() -> None:
    sig = parse_signaling({"listen": "127.0.0.1:0",
                           "backend": {"allowall": True, "secret": "app-test-secret"}},
                          "signaling")
    cfg = attrs.evolve(config(), signaling=sig)
    with trio.fail_after(20):
        async with running(cfg) as rt, client(rt) as c:
            host, port = rt.http["signaling"]
            assert host == "127.0.0.1" and port != 0
            assert f"signaling: ws://127.0.0.1:{port}/spreed" in app.describe(rt)
            await c.allocate()
            with pytest.raises(TurnError) as err:
                await c.channel_bind(0x4000, ("127.0.0.1", port))
            assert err.value.code == 403
            assert rt.stats.peer_refusals["own_address"] == 1


async def test_listeners_are_bound_while_running_and_unbound_after() -> None:
    cfg = config()
    with trio.fail_after(20):
        async with running(cfg) as rt:
            health = rt.health
            st = health.listeners["udp"]
            assert st.bound and st.port == listener_address(rt)[1] != 0
            assert health.started and not health.shutting_down and health.ready()
        assert not st.bound
        assert health.shutting_down and not health.ready()
