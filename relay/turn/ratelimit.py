"""The reflection guard on 401/438 challenges: a token bucket per source IP.

A challenge is the one answer an unauthenticated UDP sender gets, so a spoofed-source flood
could aim relay's answers at a victim.  The guard bounds that, and must never cost a
legitimate client its allocation: 200 clients behind one office NAT share a source IP and
all start at once, so the bucket holds a burst (`turn.unauthorized_burst`, one token per
challenge) and refills at `turn.unauthorized_ratelimit` tokens per second.  The caller
exempts a 5-tuple that already holds an allocation (its 438 answers keep the allocation
alive while its nonce goes stale), and TCP/TLS (a handshake proves the source).

State per IP is two numbers in a small list.  A bucket that has been idle long enough to be
full again is indistinguishable from no bucket, so idle buckets are dropped when the table
reaches `max_ips`; if every bucket is busy (a flood of spoofed sources), the oldest half goes:
a forgotten IP starts again with a full bucket, which errs towards answering.
"""

from __future__ import annotations

__all__ = ["ChallengeLimiter"]

MAX_IPS = 65536  # buckets kept at most (a few MB at worst)


class ChallengeLimiter:
    """Token buckets keyed by source IP; `allow(ip, now)` spends one token or says no."""

    __slots__ = ("buckets", "burst", "max_ips", "rate", "refill_time")

    def __init__(self, rate: float, burst: int, max_ips: int = MAX_IPS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_ips = max_ips
        self.refill_time = self.burst / self.rate  # seconds from empty to full
        self.buckets: dict[str, list[float]] = {}  # ip -> [tokens, last update]

    def allow(self, ip: str, now: float) -> bool:
        bucket = self.buckets.get(ip)
        if bucket is None:
            if len(self.buckets) >= self.max_ips:
                self.evict(now)
            self.buckets[ip] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0]
        elapsed = now - bucket[1]
        if elapsed > 0:  # a clock stepped back refills nothing (and keeps its mark)
            tokens += elapsed * self.rate
            bucket[1] = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def evict(self, now: float) -> None:
        """Forget the buckets that are full again; if none is, the oldest half."""
        horizon = now - self.refill_time
        buckets = self.buckets
        idle = [ip for ip, (_tokens, t) in buckets.items() if t <= horizon]
        for ip in idle:
            del buckets[ip]
        if len(buckets) >= self.max_ips:
            for ip in list(buckets)[: max(1, len(buckets) // 2)]:
                del buckets[ip]

    def __len__(self) -> int:
        return len(self.buckets)
