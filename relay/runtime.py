"""What the running parts of relay share: config, counters, health and the metrics registry."""

from __future__ import annotations

import time

import attrs
from prometheus_client import CollectorRegistry

from relay import __version__
from relay.config import Config
from relay.turn.stats import TurnStats


@attrs.define
class ListenerStatus:
    name: str
    protocol: str
    address: str
    port: int  # the bound port (differs from the config when it asked for 0)
    bound: bool = False


@attrs.define
class HealthState:
    """Readiness inputs: listeners bound, shutdown not started, media self-probe passing."""

    listeners: dict[str, ListenerStatus] = attrs.Factory(dict)
    started: bool = False
    shutting_down: bool = False
    probe_ok: bool = True  # the self-probe flips it when the media path stops answering
    probe_failures: int = 0

    def ready(self) -> bool:
        return (
            self.started
            and not self.shutting_down
            and self.probe_ok
            and all(lis.bound for lis in self.listeners.values())
        )


@attrs.define
class Runtime:
    config: Config
    stats: TurnStats = attrs.Factory(TurnStats)
    health: HealthState = attrs.Factory(HealthState)
    registry: CollectorRegistry = attrs.Factory(lambda: CollectorRegistry(auto_describe=True))
    version: str = __version__
    started_monotonic: float = attrs.Factory(time.monotonic)
    # Filled by the parts as they start, for /status and the peer policy:
    allocation_count: int = 0
    own_addresses: set[tuple[str, int]] = attrs.Factory(set)
    # Bound HTTP addresses ("metrics", "health", "signaling") -> (host, port), as really bound.
    bound_http: dict[str, tuple[str, int]] = attrs.Factory(dict)
