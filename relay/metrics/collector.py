"""The Prometheus collector: turns the plain-int `TurnStats` into metric families at scrape time.

Nothing here runs per packet.  The data plane bumps ints (`relay.turn.stats`); a scrape
calls `TurnCollector.collect()`, which reads those ints and builds fresh metric families.
Its cost grows with the number of listeners, clusters and label values (all bounded by the
config and the fixed label sets in `relay.turn.stats`), never with the number of
allocations, permissions or packets.

Names, types and labels of the `stunner_` families are exactly STUNner's; relay's own
families carry the `relay_` prefix.  Note the pair `stunner_listener_connections` (gauge) and
`stunner_listener_connections_total` (counter): the Prometheus text format 0.0.4 carries them
as two families, OpenMetrics cannot (it strips `_total` from counter family names), which is
why the admin app only ever answers text 0.0.4.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from relay.config import Config
from relay.fdlimit import GUARD
from relay.health import HealthState
from relay.histogram import Histogram
from relay.turn.stats import ConnectionStats, TurnStats

log = logging.getLogger("relay.metrics")

DIRECTIONS = ("rx", "tx")

# Every family the collector emits: exposed name (as it appears in the text format) -> type.
# Counters appear with their `_total` suffix, histograms with their base name (Prometheus
# adds `_bucket`, `_sum`, `_count`).  Tests and the dashboard/alert checks use this table.
STUNNER_FAMILIES: dict[str, str] = {
    "stunner_allocations_active": "gauge",
    "stunner_listener_connections": "gauge",
    "stunner_listener_connections_total": "counter",
    "stunner_listener_packets_total": "counter",
    "stunner_listener_bytes_total": "counter",
    "stunner_cluster_connections": "gauge",
    "stunner_cluster_connections_total": "counter",
    "stunner_cluster_packets_total": "counter",
    "stunner_cluster_bytes_total": "counter",
}
RELAY_FAMILIES: dict[str, str] = {
    "relay_turn_requests_total": "counter",
    "relay_turn_auth_failures_total": "counter",
    "relay_turn_peer_refusals_total": "counter",
    "relay_turn_dropped_datagrams_total": "counter",
    "relay_turn_quota_rejections_total": "counter",
    "relay_turn_allocations_total": "counter",
    "relay_turn_permissions_active": "gauge",
    "relay_turn_allocations_limit": "gauge",
    "relay_ready": "gauge",
    "relay_config_reloads_total": "counter",
    "relay_turn_channels_active": "gauge",
    "relay_turn_allocation_lifetime_seconds": "histogram",
    "relay_turn_request_duration_seconds": "histogram",
    "relay_fd_exhausted_total": "counter",
    "relay_connections_refused_total": "counter",
}
TURN_FAMILIES: dict[str, str] = {**STUNNER_FAMILIES, **RELAY_FAMILIES}


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    # prometheus_client names a counter family without `_total` and adds the suffix to the
    # sample and to the text-format family name.
    assert name.endswith("_total")
    return CounterMetricFamily(name[: -len("_total")], doc, labels=labels)


class TurnCollector:
    """Reads `TurnStats` (and the configured listener/cluster names) at scrape time."""

    def __init__(
        self, stats: TurnStats, config: Config | None = None, health: HealthState | None = None
    ) -> None:
        self.stats = stats
        self.health = health
        self._quota = config.turn.total_quota if config else 0
        self._listener_names = tuple(lis.name for lis in config.listeners) if config else ()
        self._cluster_names = tuple(c.name for c in config.clusters) if config else ()

    def describe(self) -> Iterable[Metric]:
        # Families without samples: enough for the registry's duplicate-name check.
        return list(self._families(with_samples=False))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(with_samples=True))

    # -- building ---------------------------------------------------------------------------

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        st = self.stats
        alloc = GaugeMetricFamily(
            "stunner_allocations_active", "Number of active TURN allocations."
        )
        if with_samples:
            alloc.add_metric([], st.allocations_active)
        yield alloc
        yield from self._connection_families(
            "listener",
            "downstream connections (allocations) at a listener",
            "at a listener",
            self._rows(self._listener_names, st.listeners) if with_samples else [],
        )
        yield from self._connection_families(
            "cluster",
            "upstream connections (peer permissions) admitted through a cluster",
            "to or from peers in a cluster",
            self._rows(self._cluster_names, st.clusters) if with_samples else [],
        )
        yield from self._relay_families(with_samples)

    @staticmethod
    def _rows(
        configured: tuple[str, ...], live: dict[str, ConnectionStats]
    ) -> list[tuple[str, ConnectionStats | None]]:
        rows: list[tuple[str, ConnectionStats | None]] = [(n, live.get(n)) for n in configured]
        seen = set(configured)
        rows.extend((n, s) for n, s in list(live.items()) if n not in seen)
        return rows

    @staticmethod
    def _connection_families(
        kind: str,
        what: str,
        where: str,
        rows: list[tuple[str, ConnectionStats | None]],
    ) -> Iterator[Metric]:
        prefix = f"stunner_{kind}"
        active = GaugeMetricFamily(
            f"{prefix}_connections", f"Number of active {what}.", labels=["name"]
        )
        total = _counter(f"{prefix}_connections_total", f"Number of {what}.", ["name"])
        packets = _counter(
            f"{prefix}_packets_total",
            f"Number of datagrams received (rx) or sent (tx) {where}.",
            ["direction", "name"],
        )
        nbytes = _counter(
            f"{prefix}_bytes_total",
            f"Number of bytes received (rx) or sent (tx) {where}.",
            ["direction", "name"],
        )
        for name, s in rows:
            if s is None:
                active.add_metric([name], 0)
                total.add_metric([name], 0)
                for d in DIRECTIONS:
                    packets.add_metric([d, name], 0)
                    nbytes.add_metric([d, name], 0)
                continue
            t = s.traffic
            active.add_metric([name], s.connections)
            total.add_metric([name], s.connections_total)
            packets.add_metric(["rx", name], t.rx_packets)
            packets.add_metric(["tx", name], t.tx_packets)
            nbytes.add_metric(["rx", name], t.rx_bytes)
            nbytes.add_metric(["tx", name], t.tx_bytes)
        yield active
        yield total
        yield packets
        yield nbytes

    def _relay_families(self, with_samples: bool) -> Iterator[Metric]:
        st = self.stats
        requests = _counter(
            "relay_turn_requests_total",
            "STUN/TURN requests answered, by method and result (success or error code).",
            ["method", "result"],
        )
        auth = _counter(
            "relay_turn_auth_failures_total",
            "Requests refused by authentication, by reason.",
            ["reason"],
        )
        refusals = _counter(
            "relay_turn_peer_refusals_total",
            "Peer addresses refused by the peer policy or the cluster allowlist, by reason.",
            ["reason"],
        )
        drops = _counter(
            "relay_turn_dropped_datagrams_total",
            "Datagrams dropped by the data plane, by reason.",
            ["reason"],
        )
        quota = _counter(
            "relay_turn_quota_rejections_total",
            "Requests refused because a quota was reached, by kind.",
            ["kind"],
        )
        allocs = _counter("relay_turn_allocations_total", "TURN allocations created.")
        perms = GaugeMetricFamily(
            "relay_turn_permissions_active", "Active TURN permissions in all allocations."
        )
        chans = GaugeMetricFamily(
            "relay_turn_channels_active", "Active TURN channel bindings in all allocations."
        )
        limit = GaugeMetricFamily(
            "relay_turn_allocations_limit",
            "The configured total allocation quota (turn.total_quota); 0 means unlimited.",
        )
        ready = GaugeMetricFamily(
            "relay_ready", "1 when /ready answers 200 (listeners bound, self-probe passing)."
        )
        reloads = _counter(
            "relay_config_reloads_total",
            "Configuration reloads (SIGHUP or --watch), by result (success, failure).",
            ["result"],
        )
        lifetime = HistogramMetricFamily(
            "relay_turn_allocation_lifetime_seconds",
            "Lifetime of ended TURN allocations in seconds.",
        )
        latency = HistogramMetricFamily(
            "relay_turn_request_duration_seconds",
            "Time to handle a STUN/TURN request in seconds.",
        )
        fd_exhausted = _counter(
            "relay_fd_exhausted_total",
            "Sockets, connections or relay ports refused for want of file descriptors.",
            ["where"],
        )
        capped = _counter(
            "relay_connections_refused_total",
            "Connections closed at accept because their source IP held too many.",
            ["where", "reason"],
        )
        if with_samples:
            for (method, result), n in sorted(st.requests.items()):
                requests.add_metric([method, result], n)
            for reason, n in st.auth_failures.items():
                auth.add_metric([reason], n)
            for reason, n in st.peer_refusals.items():
                refusals.add_metric([reason], n)
            for reason, n in st.drops.items():
                drops.add_metric([reason], n)
            for kind, n in st.quota_rejections.items():
                quota.add_metric([kind], n)
            allocs.add_metric([], st.allocations_total)
            perms.add_metric([], st.permissions_active)
            chans.add_metric([], st.channels_active)
            limit.add_metric([], self._quota)
            if self.health is not None:
                ready.add_metric([], 1 if self.health.ready() else 0)
                for result, n in self.health.reloads.items():
                    reloads.add_metric([result], n)
            _histogram(lifetime, st.allocation_lifetime)
            _histogram(latency, st.request_latency)
            for where, n in GUARD.exhausted.items():
                fd_exhausted.add_metric([where], n)
            for where, n in GUARD.capped.items():
                capped.add_metric([where, "per_ip_cap"], n)
        yield requests
        yield auth
        yield refusals
        yield drops
        yield quota
        yield allocs
        yield perms
        yield chans
        yield limit
        if self.health is not None:
            yield ready
            yield reloads
        yield lifetime
        yield latency
        yield fd_exhausted
        yield capped


def _histogram(family: HistogramMetricFamily, h: Histogram) -> None:
    family.add_metric([], h.buckets(), h.sum)


# -- registration -------------------------------------------------------------------------------

_installed: weakref.WeakKeyDictionary[CollectorRegistry, TurnCollector] = (
    weakref.WeakKeyDictionary()
)


class _ProcessCollector(ProcessCollector):
    """prometheus_client's process metrics, with the open-fd count cached for a few seconds.

    Counting fds lists /proc/self/fd, which takes milliseconds with 10,000 relay sockets
    open, and a scrape runs on the event loop of the media path.  Everything else is read
    on every scrape, as prometheus_client does."""

    FD_CACHE_SECONDS = 10.0

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._fd_cache: tuple[float, int] | None = None  # (monotonic time, count)
        super().__init__(registry=registry)

    def _open_fds(self, fd_dir: str) -> int:
        now = time.monotonic()
        hit = self._fd_cache
        if hit is None or now - hit[0] > self.FD_CACHE_SECONDS:
            hit = self._fd_cache = (now, len(os.listdir(fd_dir)))
        return hit[1]

    def collect(self) -> Iterable[Metric]:
        if not self._btime:
            return []
        pid = os.path.join(self._proc, str(self._pid()).strip())
        p = self._prefix
        out: list[Metric] = []
        try:
            with open(os.path.join(pid, "stat"), "rb") as f:
                parts = f.read().split(b")")[-1].split()
            ticks = self._ticks
            out.append(GaugeMetricFamily(p + "virtual_memory_bytes",
                                         "Virtual memory size in bytes.", value=float(parts[20])))
            out.append(GaugeMetricFamily(p + "resident_memory_bytes",
                                         "Resident memory size in bytes.",
                                         value=float(parts[21]) * self._pagesize))
            out.append(GaugeMetricFamily(p + "start_time_seconds",
                                         "Start time of the process since unix epoch in seconds.",
                                         value=float(parts[19]) / ticks + self._btime))
            out.append(CounterMetricFamily(p + "cpu_seconds_total",
                                           "Total user and system CPU time spent in seconds.",
                                           value=(float(parts[11]) + float(parts[12])) / ticks))
        except OSError:
            pass
        try:
            max_fds: float | None = None
            with open(os.path.join(pid, "limits"), "rb") as f:
                for line in f:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            out.append(GaugeMetricFamily(p + "open_fds", "Number of open file descriptors.",
                                         value=float(self._open_fds(os.path.join(pid, "fd")))))
            if max_fds is not None:
                out.append(GaugeMetricFamily(p + "max_fds",
                                             "Maximum number of open file descriptors.",
                                             value=max_fds))
        except OSError:
            pass
        return out


def install_collectors(
    registry: CollectorRegistry,
    stats: TurnStats,
    config: Config | None = None,
    health: HealthState | None = None,
) -> TurnCollector:
    """Register the TURN collector plus the process, platform and GC collectors, once.

    Calling it again for the same registry returns the collector already installed.  A
    process/platform/GC collector whose names are already taken in the registry (another
    part registered one) is skipped, not doubled.
    """
    existing = _installed.get(registry)
    if existing is not None:
        return existing
    turn = TurnCollector(stats, config, health)
    registry.register(turn)
    for make in (_ProcessCollector, PlatformCollector, GCCollector):
        try:
            make(registry=registry)
        except ValueError:  # duplicated timeseries: someone registered it already
            log.debug("%s already registered; not adding it twice", make.__name__)
    _installed[registry] = turn
    return turn


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every metric name a scrape of `registry` can contain (families and their samples)."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "info": ("_info",),
    }
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names
