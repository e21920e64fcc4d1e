"""The TURN client's one transaction loop, driven without sockets over a fake transport.

The same loop serves UDP (retransmission with RTO doubling) and reliable transports (one
send); messages that are not the awaited response are kept for recv().  The clock is
Trio's autojump clock, so retransmission timers cost no real time.
"""

from __future__ import annotations

import pytest
import trio

from benchmarks.turnclient import TurnClient, TurnError
from relay.stun import (
    ErrorCode,
    Message,
    MessageClass,
    Method,
    XorMappedAddress,
    data_indication,
    decode,
)

MAPPED = ("192.0.2.10", 40000)


class FakeServer(TurnClient):
    """A client whose transport is in memory: the server answers the `answer_on`-th copy of
    a request (0 = never), after an unrelated Data indication and a stale response."""

    def __init__(self, *, reliable: bool, answer_on: int, error: int = 0) -> None:
        super().__init__(("127.0.0.1", 3478), "user", "pw", rto=0.5)
        self.reliable = reliable
        self.answer_on = answer_on
        self.error = error
        self.sent: list[bytes] = []
        self._to_client, self._inbox = trio.open_memory_channel[bytes](64)

    async def _open_socket(self, port: int = 0) -> None:
        self.local_address = ("127.0.0.1", 50000)

    def close(self) -> None:
        pass

    async def send_raw(self, data: bytes) -> None:
        self.sent.append(data)
        if len(self.sent) != self.answer_on:
            return
        tid = decode(data).transaction_id
        self._to_client.send_nowait(data_indication(b"\x01" * 12, "192.0.2.20", 9, b"peer"))
        stale = Message(Method.BINDING, MessageClass.SUCCESS, b"\x02" * 12,
                        [XorMappedAddress("192.0.2.99", 1)])
        self._to_client.send_nowait(stale.encode())
        if self.error:
            answer = Message(Method.BINDING, MessageClass.ERROR, tid,
                             [ErrorCode(self.error, "Bad Request")])
        else:
            answer = Message(Method.BINDING, MessageClass.SUCCESS, tid,
                             [XorMappedAddress(*MAPPED)])
        self._to_client.send_nowait(answer.encode())

    async def _recv_datagram(self) -> bytes:
        return await self._inbox.receive()


async def test_udp_retransmits_the_same_request_until_answered(autojump_clock: object) -> None:
    async with FakeServer(reliable=False, answer_on=3) as c:
        assert await c.binding() == MAPPED
        assert len(c.sent) == 3 and len(set(c.sent)) == 1  # one transaction, resent
        kind, peer, payload = await c.recv()
        assert (kind, peer, payload) == ("data", ("192.0.2.20", 9), b"peer")
        kind, msg, _raw = await c.recv()  # the stale response is not taken for ours
        assert kind == "stun" and msg.transaction_id == b"\x02" * 12


async def test_reliable_transport_sends_a_request_once(autojump_clock: object) -> None:
    async with FakeServer(reliable=True, answer_on=1) as c:
        assert await c.binding() == MAPPED
        assert len(c.sent) == 1
        assert (await c.recv())[0] == "data"


async def test_reliable_transport_times_out_without_resending(autojump_clock: object) -> None:
    async with FakeServer(reliable=True, answer_on=0) as c:
        with pytest.raises(trio.TooSlowError):
            await c.binding()
        assert len(c.sent) == 1


async def test_udp_without_retransmit_sends_once(autojump_clock: object) -> None:
    async with FakeServer(reliable=False, answer_on=0) as c:
        req = Message(Method.BINDING, MessageClass.REQUEST, b"\x03" * 12)
        with pytest.raises(trio.TooSlowError):
            await c.request(req, authenticate=False, retransmit=False)
        assert len(c.sent) == 1


async def test_error_response_is_raised_with_its_code(autojump_clock: object) -> None:
    async with FakeServer(reliable=False, answer_on=1, error=400) as c:
        with pytest.raises(TurnError) as err:
            await c.binding()
        assert err.value.code == 400 and len(c.sent) == 1
