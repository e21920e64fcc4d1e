"""turn.batch_io picks the gateway's datagram system calls: recvmmsg/sendmmsg when true and
the platform has them, else (and by default) one recvfrom/sendto per datagram."""

from __future__ import annotations

import pytest
import trio

from relay.config import ConfigError
from relay.net import mmsg
from relay.net.gateway import Gateway, serve_gateway
from relay.turn.stats import TurnStats
from tests.turn.gateway_harness import config


@pytest.mark.parametrize("batch_io", [None, True, False])
async def test_the_gateway_uses_batched_io_when_configured_and_available(
        batch_io: bool | None) -> None:
    cfg = config(turn={} if batch_io is None else {"batch_io": batch_io})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            gw: Gateway = await nursery.start(serve_gateway, cfg, TurnStats())
            # off by default: it measured no gain (benchmarks/README.md)
            assert gw.batch_io is (batch_io is True and mmsg.AVAILABLE)
            nursery.cancel_scope.cancel()


def test_batch_io_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"turn\.batch_io"):
        config(turn={"batch_io": "often"})
