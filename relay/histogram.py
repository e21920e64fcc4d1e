"""A fixed-bucket histogram as plain ints, shared by every layer that measures something.

A leaf module (it imports nothing of ours), next to `relay.config` and `relay.errors`: the
TURN core (`relay.turn.stats`) and the signaling counters (`relay.signaling.metrics`) both
observe into it without importing upwards, and a collector reads it at scrape time.
`observe` is a bisect and three adds; cumulative bucket counts are only made by `buckets`.
Plain fields, so counts from several worker processes can be summed bucket by bucket.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

__all__ = ["Histogram"]


class Histogram:
    """Bucket counts (the last slot is +Inf only), their sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (upper bound text, count) pairs, "+Inf" last, as Prometheus wants them."""
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((repr(float(bound)), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out
