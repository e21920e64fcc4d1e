"""turn.batch_io picks the gateway's datagram system calls: recvmmsg/sendmmsg when true and
the platform has them, else (and by default) one recvfrom/sendto per datagram."""

from __future__ import annotations

import logging

import pytest
import trio

from relay.config import ConfigError
from relay.net import mmsg, native
from relay.net.gateway import Gateway, serve_gateway
from relay.turn.stats import TurnStats
from tests.turn.gateway_harness import config


@pytest.mark.parametrize("batch_io", [None, True, False])
async def test_the_gateway_uses_batched_io_when_configured_and_available(
        batch_io: bool | None) -> None:
    cfg = config(turn={"data_plane": "python"} if batch_io is None
                 else {"batch_io": batch_io, "data_plane": "python"})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            gw: Gateway = await nursery.start(serve_gateway, cfg, TurnStats())
            # off by default: it measured no gain (benchmarks/README.md)
            assert gw.batch_io is (batch_io is True and mmsg.AVAILABLE)
            nursery.cancel_scope.cancel()


def test_batch_io_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"turn\.batch_io"):
        config(turn={"batch_io": "often"})


@pytest.mark.parametrize("plane", ["auto", "native", "python"])
async def test_data_plane_picks_the_compiled_plane_where_numba_is_installed(
        plane: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.gateway")
    cfg = config(turn={"data_plane": plane})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            if plane == "native" and not native.AVAILABLE:
                with pytest.raises(ConfigError, match=r"turn\.data_plane.*numba"):
                    await nursery.start(serve_gateway, cfg, TurnStats())
                return
            gw: Gateway = await nursery.start(serve_gateway, cfg, TurnStats())
            assert (gw.native is not None) is (plane != "python" and native.AVAILABLE)
            # the operator reads which one in the log
            assert ("TURN-UDP data plane: compiled (numba)" if gw.native is not None
                    else "TURN-UDP data plane: Python") in caplog.text
            nursery.cancel_scope.cancel()


def test_data_plane_must_be_a_known_one() -> None:
    with pytest.raises(ConfigError, match=r"turn\.data_plane: 'fast' is not one of auto"):
        config(turn={"data_plane": "fast"})
