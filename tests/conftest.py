"""`datagram_io`: run a gateway test on each datagram path: the compiled plane
(`turn.data_plane: native`, where numba is installed), the batched (recvmmsg/sendmmsg) and
the plain (recvfrom_into/sendto) Python paths; `pytestmark =
pytest.mark.usefixtures("datagram_io")` (the gateway tests in tests/turn, the reload and
drain tests in tests/test_lifecycle.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay.net import mmsg, native
from tests.turn import gateway_harness


@pytest.fixture(params=["native", "batched", "plain"])
def datagram_io(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "batched" and not mmsg.AVAILABLE:
        pytest.skip("recvmmsg/sendmmsg not available on this platform")
    if request.param == "native" and not native.AVAILABLE:
        pytest.skip(f"numba not available: {native.MISSING}")
    gateway_harness.DATA_PATH[0] = (
        {"data_plane": "native"} if request.param == "native"
        else {"data_plane": "python", "batch_io": request.param == "batched"})
    try:
        yield request.param
    finally:
        gateway_harness.DATA_PATH[0] = None
