"""Readiness state: which listeners are bound, whether relay started or is shutting down,
and the media self-probe's verdict.

`relay.app` owns it (it marks listeners bound once the gateway reports their ports, sets
`started` and `shutting_down`, and runs the self-probe that writes `probe_ok`); the admin
app and the collector only read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from relay.config import ListenerConfig


@attrs.define
class ListenerStatus:
    name: str
    protocol: str
    address: str
    port: int  # the bound port (differs from the config when it asked for 0)
    bound: bool = False


@attrs.define
class WorkerStatus:
    """A TURN worker process as its supervisor sees it."""

    index: int
    pid: int | None = None
    up: bool = False  # started and answering; false while down or restarting
    since: float = 0.0  # Unix time of the last start
    restarts: int = 0
    allocations: int = 0  # from its last report
    packets: int = 0  # datagrams its listeners received, from its last report


@attrs.define
class HealthState:
    """Readiness inputs: listeners bound, shutdown not started, media self-probe passing."""

    listeners: dict[str, ListenerStatus] = attrs.Factory(dict)
    started: bool = False
    shutting_down: bool = False
    probe_ok: bool = True  # the self-probe flips it when the media path stops answering
    probe_failures: int = 0
    # configuration reloads by result ("success", "failure"): relay_config_reloads_total
    reloads: dict[str, int] = attrs.Factory(lambda: {"success": 0, "failure": 0})
    draining: bool = False  # SIGTERM received: allocations are being drained
    workers: dict[int, WorkerStatus] = attrs.Factory(dict)  # with turn.workers > 1

    @classmethod
    def for_listeners(cls, listeners: Iterable[ListenerConfig]) -> HealthState:
        """Every configured listener, not bound yet, at its configured port."""
        return cls({lis.name: ListenerStatus(lis.name, lis.protocol, lis.address, lis.port)
                    for lis in listeners})

    def mark_bound(self, ports: Mapping[str, int]) -> None:
        """The listeners in `ports` are bound, at these (really bound) ports."""
        for name, port in ports.items():
            st = self.listeners.get(name)
            if st is not None:
                st.port = port
                st.bound = True

    def set_listeners(self, listeners: Iterable[ListenerConfig], ports: Mapping[str, int]
                      ) -> None:
        """After a reload: exactly these listeners, bound at `ports` (a removed listener
        that still drains its allocations no longer counts for readiness)."""
        self.listeners = {lis.name: ListenerStatus(lis.name, lis.protocol, lis.address,
                                                   ports.get(lis.name, lis.port),
                                                   lis.name in ports)
                          for lis in listeners}

    def mark_unbound(self) -> None:
        for st in self.listeners.values():
            st.bound = False

    def ready(self) -> bool:
        return (
            self.started
            and not self.shutting_down
            and self.probe_ok
            and all(lis.bound for lis in self.listeners.values())
            and all(w.up for w in self.workers.values())
        )
