"""The per-connection message token bucket, driven with explicit times."""

from __future__ import annotations

from relay.signaling.ratelimit import MessageRate, RateVerdict


def test_burst_then_refill_at_the_rate() -> None:
    r = MessageRate(rate=4, burst=5)
    assert [r.take(100.0) for _ in range(5)] == [RateVerdict.OK] * 5
    assert r.take(100.0) is RateVerdict.REFUSE  # answered once ...
    assert r.take(100.0) is RateVerdict.REFUSE_QUIETLY  # ... then dropped quietly
    assert r.take(100.25) is RateVerdict.OK  # 0.25 s at 4/s: one token
    assert r.take(100.25) is RateVerdict.REFUSE  # a new run is answered again
    assert [r.take(110.0) for _ in range(6)].count(RateVerdict.OK) == 5  # capped at burst


def test_a_client_sending_through_the_refusal_is_closed() -> None:
    r = MessageRate(rate=1, burst=3)
    verdicts = [r.take(5.0) for _ in range(3 + 3 + 1)]
    assert verdicts[:3] == [RateVerdict.OK] * 3
    assert verdicts[3] is RateVerdict.REFUSE
    assert verdicts[4:6] == [RateVerdict.REFUSE_QUIETLY] * 2
    assert verdicts[6] is RateVerdict.CLOSE  # a burst's worth refused in a row


def test_an_accepted_message_ends_the_refused_run() -> None:
    r = MessageRate(rate=1, burst=2)
    r.take(0.0), r.take(0.0)
    assert r.take(0.0) is RateVerdict.REFUSE
    assert r.take(0.0) is RateVerdict.REFUSE_QUIETLY
    assert r.take(1.0) is RateVerdict.OK
    assert r.refused == 0
    assert r.take(1.0) is RateVerdict.REFUSE


def test_rate_zero_turns_the_limit_off() -> None:
    r = MessageRate(rate=0, burst=1)
    assert all(r.take(0.0) is RateVerdict.OK for _ in range(10_000))


def test_time_going_backwards_adds_no_tokens() -> None:
    r = MessageRate(rate=100, burst=1)
    assert r.take(50.0) is RateVerdict.OK
    assert r.take(49.0) is RateVerdict.REFUSE
