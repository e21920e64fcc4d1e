"""relay.net.mmsg on loopback sockets: recvmmsg/sendmmsg through ctypes give the same
datagrams and the same address tuples as the plain socket calls."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from relay.net import mmsg

pytestmark = pytest.mark.skipif(not mmsg.AVAILABLE, reason="no recvmmsg/sendmmsg here")


def _has_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not _has_v6(), reason="no IPv6 loopback"))]


@contextmanager
def pair(host: str) -> Iterator[tuple[socket.socket, socket.socket]]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    a = socket.socket(fam, socket.SOCK_DGRAM)
    b = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        for s in (a, b):
            s.bind((host, 0))
            s.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("host", HOSTS)
def test_a_batch_sent_in_one_call_is_received_in_slots_with_the_senders_address(
        host: str) -> None:
    with pair(host) as (rx, tx):
        out = mmsg.SendBatch(count=8, slot=2048)
        result = mmsg.SendResult()
        sent = [bytes([i]) * (i + 1) for i in range(6)]
        for i, data in enumerate(sent[:5]):
            out.slot()[: len(data)] = data
            out.push(len(data), rx.getsockname())
            assert out.pending == i + 1
        out.push_bytes(sent[5], rx.getsockname())
        out.flush(tx, result)
        assert (result.sent, result.sent_bytes, out.pending) == (6, sum(map(len, sent)), 0)

        batch = mmsg.RecvBatch(count=4, slot=2048)
        got = []
        for _ in range(2):  # the slots are reused by the next call: copy out first
            got += [(bytes(v[:n]), n, addr) for v, n, addr in batch.recv(rx.fileno())]
        assert [data for data, _, _ in got] == sent
        assert {addr for _, _, addr in got} == {tx.getsockname()}
        assert batch.recv(rx.fileno()) == []  # drained: EAGAIN is an empty batch

        # the same datagram through the plain call gives the same address tuple
        tx.sendto(b"plain", rx.getsockname())
        data, addr = rx.recvfrom(100)
        assert (data, addr) == (b"plain", got[0][2])


@pytest.mark.parametrize("host", HOSTS)
def test_a_datagram_the_kernel_refuses_is_dropped_alone(host: str) -> None:
    with pair(host) as (rx, tx):
        out = mmsg.SendBatch(count=4, slot=70000)
        result = mmsg.SendResult()
        out.push_bytes(b"first", rx.getsockname())
        out.push_bytes(bytes(66000), rx.getsockname())  # larger than any UDP datagram
        out.push_bytes(b"third", rx.getsockname())
        out.flush(tx, result)
        assert (result.sent, result.dropped_refused, result.dropped_full) == (2, 1, 0)
        got = mmsg.RecvBatch(count=4, slot=2048).recv(rx.fileno())
        assert [bytes(v[:n]) for v, n, _ in got] == [b"first", b"third"]


def test_a_datagram_larger_than_a_slot_is_refused_before_queueing() -> None:
    out = mmsg.SendBatch(count=2, slot=16)
    with pytest.raises(ValueError):
        out.push_bytes(bytes(17), ("127.0.0.1", 9))
    assert out.pending == 0


def test_a_full_batch_says_so() -> None:
    out = mmsg.SendBatch(count=2, slot=16)
    out.push_bytes(b"a", ("127.0.0.1", 9))
    assert not out.full
    out.push_bytes(b"b", ("127.0.0.1", 9))
    assert out.full


def test_reading_a_closed_socket_raises_ebadf() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = s.fileno()
    s.close()
    with pytest.raises(OSError) as info:
        mmsg.RecvBatch(count=2, slot=64).recv(fd)
    assert info.value.errno == errno.EBADF


def test_many_senders_keep_their_own_addresses() -> None:
    with pair("127.0.0.1") as (rx, _):
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
        try:
            for i, s in enumerate(senders):
                s.bind(("127.0.0.1", 0))
                s.sendto(bytes([i]), rx.getsockname())
            batch = mmsg.RecvBatch(count=16, slot=64)
            got = batch.recv(rx.fileno())
            assert {(v[0], addr) for v, n, addr in got} == {
                (i, s.getsockname()) for i, s in enumerate(senders)}
        finally:
            for s in senders:
                s.close()
