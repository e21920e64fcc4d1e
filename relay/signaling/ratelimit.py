"""Per-session message rate limit of the signaling WebSocket (sans-IO, `now` an argument).

upstream (nextcloud-spreed-signaling) bounds what one client may send by size: a read limit
of 64 KiB per message (`maxMessageSize`, close 1009), and answers throttled requests with
the error `too_many_requests` ("Too many requests.").  It has no limit on the number of
messages, so one session could keep the single event loop busy and slow the TURN media
path beside it.  relay adds a token bucket per connection:

* each message takes a token; tokens refill at `rate` per second up to `burst`;
* a message without a token is dropped unhandled and adds one to the client's debt, which
  drains at `rate` per second like the tokens refill; the first refusal from a clean slate
  (no debt) is answered with `too_many_requests`, the rest are dropped quietly, so the
  flood is not echoed back;
* a client whose debt passes `burst` (it sends through that answer, faster than the rate,
  for long) is closed with 1008 (policy violation): it reconnects and says hello again.

Talk sends a few messages a second per peer in a call (offers, answers, candidates,
control) and bursts at call start; the defaults (`clients.messagerate: 100`,
`clients.messageburst: 500`) leave a large call untouched.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["TOO_MANY_REQUESTS", "MessageRate", "RateVerdict"]

TOO_MANY_REQUESTS = ("too_many_requests", "Too many requests.")  # upstream's error


class RateVerdict(enum.Enum):
    OK = "ok"
    REFUSE = "refuse"  # drop the message; answer too_many_requests
    REFUSE_QUIETLY = "refuse_quietly"  # drop; already answered in this run
    CLOSE = "close"  # the client ignores the answer: close 1008


@attrs.define(slots=True)
class MessageRate:
    """A token bucket: `take(now)` for each message a client sends."""

    rate: float  # tokens per second
    burst: int  # bucket size; also the debt that closes the connection
    tokens: float = attrs.field(init=False)
    stamp: float = attrs.field(init=False, default=float("-inf"))
    debt: float = attrs.field(init=False, default=0.0)  # refused messages, draining

    def __attrs_post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> RateVerdict:
        if self.rate <= 0:
            return RateVerdict.OK  # 0 turns the limit off
        if now > self.stamp:
            gained = (now - self.stamp) * self.rate
            self.tokens = min(float(self.burst), self.tokens + gained)
            self.debt = max(0.0, self.debt - gained)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return RateVerdict.OK
        clean = self.debt == 0.0  # fully paid since the last refusal
        self.debt += 1.0
        if self.debt > self.burst:
            return RateVerdict.CLOSE
        return RateVerdict.REFUSE if clean else RateVerdict.REFUSE_QUIETLY
