"""`datagram_io`: run a gateway test on the batched (recvmmsg/sendmmsg) path and on the
plain (recvfrom_into/sendto) path; `pytestmark = pytest.mark.usefixtures("datagram_io")`
(the gateway tests in tests/turn, the reload and drain tests in tests/test_lifecycle.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay.net import mmsg
from tests.turn import gateway_harness


@pytest.fixture(params=["batched", "plain"])
def datagram_io(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "batched" and not mmsg.AVAILABLE:
        pytest.skip("recvmmsg/sendmmsg not available on this platform")
    gateway_harness.BATCH_IO[0] = request.param == "batched"
    try:
        yield request.param
    finally:
        gateway_harness.BATCH_IO[0] = None
