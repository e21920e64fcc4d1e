"""The 401/438 reflection guard's token buckets on their own."""

from __future__ import annotations

import pytest

from relay.turn.ratelimit import ChallengeLimiter


def test_a_burst_then_the_refill_rate() -> None:
    lim = ChallengeLimiter(rate=10, burst=200)
    assert all(lim.allow("192.0.2.1", 0.0) for _ in range(200))
    assert not lim.allow("192.0.2.1", 0.0)
    assert lim.allow("192.0.2.1", 0.1)  # one token back after 1/rate seconds
    assert not lim.allow("192.0.2.1", 0.1)
    # Never more than the burst, however long the IP was quiet.
    assert sum(lim.allow("192.0.2.1", 1000.0) for _ in range(300)) == 200


def test_a_clock_stepping_back_refills_nothing() -> None:
    lim = ChallengeLimiter(rate=1, burst=1)
    assert lim.allow("192.0.2.1", 100.0)
    assert not lim.allow("192.0.2.1", 50.0)
    assert not lim.allow("192.0.2.1", 100.5)


def test_the_table_stays_bounded_and_forgets_idle_buckets_first() -> None:
    lim = ChallengeLimiter(rate=1, burst=2, max_ips=100)
    for i in range(100):
        lim.allow(f"10.0.0.{i}", 0.0)
    lim.allow("198.51.100.1", 0.0)
    lim.allow("198.51.100.1", 0.0)
    assert not lim.allow("198.51.100.1", 0.0)
    # Later every old bucket is full again (2 s): they are dropped, the busy one is kept.
    lim.allow("198.51.100.1", 2.5)
    for i in range(60):
        lim.allow(f"10.1.0.{i}", 2.5)
    assert len(lim) <= 100
    assert "198.51.100.1" in lim.buckets
    # A flood of distinct busy sources: the table still never exceeds its bound.
    for i in range(1000):
        lim.allow(f"10.2.{i // 256}.{i % 256}", 3.0)
        assert len(lim) <= 100


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        ChallengeLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        ChallengeLimiter(rate=1, burst=0)
