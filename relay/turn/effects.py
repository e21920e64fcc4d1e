"""What the TURN core tells the I/O layer: the effects of a request, a sweep or a delete.

The core (`relay.turn.server`) never calls back into the gateway.  `TurnServer.handle`
returns an `Outcome` (the reply to send and the effects, in order); `delete`, `sweep` and
`close_all` return the effects they caused.  The gateway performs them: it starts an
allocation's task and binds its sender on `AllocationCreated`, and cancels that task and
tells a stream connection on `AllocationDeleted`.  So an allocation's life reads in one
place, `Gateway.perform`.

Nothing here is on the per-packet path: effects only come from requests and the sweeper.
"""

from __future__ import annotations

import attrs

from relay.turn.allocation import Allocation

__all__ = ["AllocationCreated", "AllocationDeleted", "Effect", "Outcome"]


@attrs.frozen(eq=False)
class AllocationCreated:
    """A new allocation, its relay endpoints open; the reply announcing it is in the same
    `Outcome`, so perform this before sending it."""

    allocation: Allocation


@attrs.frozen(eq=False)
class AllocationDeleted:
    """An allocation is gone (Refresh 0, expiry, deletion): its counters are settled and its
    relay endpoints already released through the `RelayPortAllocator`."""

    allocation: Allocation


Effect = AllocationCreated | AllocationDeleted


@attrs.frozen
class Outcome:
    """What one STUN message from a client led to: the reply (None: stay silent) and the
    effects to perform before sending it."""

    reply: bytes | None
    effects: tuple[Effect, ...] = ()
