"""decode(data, max_attributes): a message with more attributes is refused before any
attribute is decoded, so a hostile 64 KB message costs a bounded header walk."""

from __future__ import annotations

import os
import struct

import pytest

from relay.stun import Message, MessageClass, Method, StunDecodeError, UnknownAttribute, decode
from relay.stun.attributes import XorPeerAddress
from relay.stun.message import TooManyAttributes


def _message(count: int) -> bytes:
    return Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12),
                   [UnknownAttribute(0x8100, b"abcd") for _ in range(count)]).encode()


@pytest.mark.parametrize("count", [0, 1, 63, 64])
def test_up_to_the_bound_every_attribute_is_decoded(count: int) -> None:
    assert len(decode(_message(count), 64).attributes) == count


@pytest.mark.parametrize("count", [65, 200, 8000])
def test_over_the_bound_raises_a_decode_error(count: int) -> None:
    data = _message(count)
    with pytest.raises(TooManyAttributes):
        decode(data, 64)
    assert isinstance(TooManyAttributes("x"), StunDecodeError)
    assert len(decode(data).attributes) == count  # no bound: the caller's choice


def test_the_bound_counts_zero_length_attributes() -> None:
    body = struct.pack("!HH", 0x8100, 0) * 65
    data = struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, os.urandom(12)) + body
    with pytest.raises(TooManyAttributes):
        decode(data, 64)


def test_peer_addresses_over_the_bound_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    peers = [XorPeerAddress("192.0.2.1", 5000 + i) for i in range(4000)]
    data = Message(Method.CREATE_PERMISSION, MessageClass.REQUEST, os.urandom(12),
                   list(peers)).encode()
    calls = []
    from relay.stun import message as message_module
    original = message_module.DECODERS
    counting = {k: (lambda v, t, _f=f: calls.append(1) or _f(v, t)) for k, f in original.items()}
    monkeypatch.setattr(message_module, "DECODERS", counting)
    with pytest.raises(TooManyAttributes):
        decode(data, 64)
    assert calls == []
