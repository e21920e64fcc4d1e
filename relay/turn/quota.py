"""Allocation quotas shared by several TURN cores (worker processes of one server).

`user_quota` and `total_quota` hold for the whole server.  A core with a `QuotaLedger` asks
it, on Allocate, to reserve one allocation for a user against both quotas counted over every
core, and gives it back when the allocation ends (or its relay port cannot be had).  The
ledger is synchronous and never blocks for long (Allocate only, never the data path); the
worker supervisor provides one over shared memory (`relay.net.shared_quota`).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["QuotaLedger"]


class QuotaLedger(Protocol):
    def reserve(self, user_id: str, user_quota: int, total_quota: int) -> str | None:
        """Count one more allocation of `user_id` unless that would pass a quota (0: none);
        the quota refused ("user" or "total") or None when counted."""
        ...

    def release(self, user_id: str) -> None:
        """One allocation of `user_id` ended."""
        ...
