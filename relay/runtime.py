"""What the HTTP parts of a running relay read: config, counters, health, metrics registry.

`Runtime` is a frozen bundle that `relay.app` assembles before anything starts and hands to
the admin app and the signaling server.  Nobody sets its fields; the objects it carries
each have one writer: the TURN core and gateway bump `stats`, `relay.app` (and the
self-probe it runs) writes `health`, and each part registers its collector in `registry`
once, at start.  Where the parts really bound is not in here: `relay.app` collects those
addresses as the parts start and tells the gateway up front.
"""

from __future__ import annotations

import time

import attrs
from prometheus_client import CollectorRegistry

from relay import __version__
from relay.config import Config
from relay.health import HealthState, ListenerStatus
from relay.turn.stats import TurnStats

# The health types live in relay.health; they stay importable from here for older imports.
__all__ = ["HealthState", "ListenerStatus", "Runtime"]


def _health_of(runtime: Runtime) -> HealthState:
    return HealthState.for_listeners(runtime.config.listeners)


@attrs.frozen
class Runtime:
    config: Config
    stats: TurnStats = attrs.Factory(TurnStats)
    health: HealthState = attrs.Factory(_health_of, takes_self=True)
    registry: CollectorRegistry = attrs.Factory(lambda: CollectorRegistry(auto_describe=True))
    version: str = __version__
    started_monotonic: float = attrs.Factory(time.monotonic)
