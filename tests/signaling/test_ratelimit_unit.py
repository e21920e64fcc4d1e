"""The per-connection message token bucket, driven with explicit times."""

from __future__ import annotations

from relay.signaling.ratelimit import MessageRate, RateVerdict


def test_burst_then_refill_at_the_rate() -> None:
    r = MessageRate(rate=4, burst=5)
    assert [r.take(100.0) for _ in range(5)] == [RateVerdict.OK] * 5
    assert r.take(100.0) is RateVerdict.REFUSE  # answered once ...
    assert r.take(100.0) is RateVerdict.REFUSE_QUIETLY  # ... then dropped quietly
    assert r.take(100.25) is RateVerdict.OK  # 0.25 s at 4/s: one token
    assert r.take(100.25) is RateVerdict.REFUSE_QUIETLY  # the debt (1 of 2) is not paid
    assert [r.take(110.0) for _ in range(6)] == [RateVerdict.OK] * 5 + [RateVerdict.REFUSE]


def test_a_client_sending_through_the_refusal_is_closed() -> None:
    r = MessageRate(rate=1, burst=3)
    verdicts = [r.take(5.0) for _ in range(3 + 3 + 1)]
    assert verdicts[:3] == [RateVerdict.OK] * 3
    assert verdicts[3] is RateVerdict.REFUSE
    assert verdicts[4:6] == [RateVerdict.REFUSE_QUIETLY] * 2
    assert verdicts[6] is RateVerdict.CLOSE  # more than a burst refused, unpaid


def test_a_flood_is_closed_although_tokens_trickle_in() -> None:
    """10,000 messages/s against 100/s: the accepted trickle does not reset the debt."""
    r = MessageRate(rate=100, burst=500)
    now, verdicts = 0.0, []
    while not verdicts or verdicts[-1] is not RateVerdict.CLOSE:
        now += 0.0001
        verdicts.append(r.take(now))
        assert len(verdicts) < 10_000, "never closed"
    assert verdicts.count(RateVerdict.REFUSE) == 1
    assert 500 <= verdicts.count(RateVerdict.OK) < 700


def test_a_client_slightly_over_the_rate_is_limited_not_closed() -> None:
    r = MessageRate(rate=10, burst=20)
    verdicts = [r.take(i * 0.08) for i in range(1000)]  # 12.5/s for 80 s
    assert RateVerdict.CLOSE not in verdicts
    assert RateVerdict.REFUSE_QUIETLY in verdicts or RateVerdict.REFUSE in verdicts
    assert verdicts.count(RateVerdict.OK) < 1000


def test_rate_zero_turns_the_limit_off() -> None:
    r = MessageRate(rate=0, burst=1)
    assert all(r.take(0.0) is RateVerdict.OK for _ in range(10_000))


def test_time_going_backwards_adds_no_tokens() -> None:
    r = MessageRate(rate=100, burst=1)
    assert r.take(50.0) is RateVerdict.OK
    assert r.take(49.0) is RateVerdict.REFUSE
