"""Signaling counters as plain ints, exposed by a Collector at scrape time.

Names, types and labels are spreed-signaling's. As in its Go client, a labelled family with
no series yet is not exposed at all (no HELP/TYPE lines). MCU, proxy and GRPC families are
not registered: those parts do not exist here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from relay.histogram import Histogram


def exponential_buckets_range(low: float, high: float, count: int) -> tuple[float, ...]:
    """Go's prometheus.ExponentialBucketsRange: low·(high/low)^(i/(count-1))."""
    growth = (high / low) ** (1.0 / (count - 1))
    return tuple(low * growth**i for i in range(count))


RTT_BUCKETS_MS = exponential_buckets_range(1, 30000, 50)
BACKEND_DURATION_BUCKETS_S = exponential_buckets_range(0.01, 30, 30)


@attrs.define
class SignalingStats:
    """Counters bumped by the hub, the connections and the backend client."""

    sessions_total: dict[tuple[str, str], int] = attrs.Factory(dict)  # (backend, clienttype)
    resume_total: dict[tuple[str, str], int] = attrs.Factory(dict)
    resume_failed_total: int = 0
    server_messages: dict[str, int] = attrs.Factory(dict)  # whitelisted type
    session_limit_exceeded: dict[str, int] = attrs.Factory(dict)  # backend
    backend_requests: dict[str, int] = attrs.Factory(dict)  # backend
    backend_durations: dict[str, Histogram] = attrs.Factory(dict)
    backend_errors: dict[tuple[str, str], int] = attrs.Factory(dict)  # (backend, error)
    pool_connections: dict[str, int] = attrs.Factory(dict)  # host -> in flight
    client_rtt: Histogram = attrs.Factory(lambda: Histogram(RTT_BUCKETS_MS))
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    call_sessions_total: dict[tuple[str, str], int] = attrs.Factory(dict)
    call_rooms_total: dict[str, int] = attrs.Factory(dict)
    throttle_delayed: dict[tuple[str, str], int] = attrs.Factory(dict)  # (action, delay ms)
    throttle_bruteforce: dict[str, int] = attrs.Factory(dict)  # action
    countries: dict[str, int] = attrs.Factory(dict)  # ISO country code
    # relay's own diagnostics (not exported): dropped slow-consumer queues, pending overflow
    slow_clients_closed: int = 0
    # relay_signaling_client_messages_ratelimited_total: over the per-connection rate
    messages_ratelimited: int = 0
    ratelimit_closed: int = 0  # connections closed 1008 for ignoring too_many_requests
    pending_dropped: int = 0

    def backend_request_done(self, backend: str, seconds: float, error: str | None) -> None:
        self.backend_requests[backend] = self.backend_requests.get(backend, 0) + 1
        hist = self.backend_durations.get(backend)
        if hist is None:
            hist = self.backend_durations[backend] = Histogram(BACKEND_DURATION_BUCKETS_S)
        hist.observe(seconds)
        if error is not None:
            key = (backend, error)
            self.backend_errors[key] = self.backend_errors.get(key, 0) + 1


def _nonzero(**values: int) -> dict[str, int]:
    """Series that exist yet (a Go CounterVec has no child before its first increment)."""
    return {k: v for k, v in values.items() if v}


def bump(d: dict[Any, int], key: Any, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


@attrs.frozen
class HubGauges:
    """A snapshot of the hub's current state, taken at scrape time."""

    sessions: dict[tuple[str, str], int]  # (backend, clienttype)
    rooms: dict[str, int]  # backend
    room_sessions: dict[tuple[str, str, str], int]  # (backend, room, clienttype)
    call_sessions: dict[tuple[str, str, str], int]
    backends_current: int
    session_limits: dict[str, int]  # backend -> limit (>0 only)


class SignalingCollector(Collector):
    def __init__(self, stats: SignalingStats, gauges: Callable[[], HubGauges]) -> None:
        self.stats = stats
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        st = self.stats
        g = self.gauges()

        def gauge(name: str, doc: str, labels: list[str], values: dict[Any, int]) -> Any:
            fam = GaugeMetricFamily(name, doc, labels=labels)
            for key, v in sorted(values.items()):
                fam.add_metric(list(key) if isinstance(key, tuple) else [key], v)
            return fam

        def counter(name: str, doc: str, labels: list[str], values: dict[Any, int]) -> Any:
            fam = CounterMetricFamily(name, doc, labels=labels)
            for key, v in sorted(values.items()):
                fam.add_metric(list(key) if isinstance(key, tuple) else [key], v)
            return fam

        labelled: list[Any] = [
            gauge("signaling_hub_rooms", "The current number of rooms per backend",
                  ["backend"], g.rooms),
            gauge("signaling_hub_sessions", "The current number of sessions per backend",
                  ["backend", "clienttype"], g.sessions),
            counter("signaling_hub_sessions_total", "The total number of sessions per backend",
                    ["backend", "clienttype"], st.sessions_total),
            counter("signaling_hub_sessions_resume_total",
                    "The total number of resumed sessions per backend",
                    ["backend", "clienttype"], st.resume_total),
            gauge("signaling_room_sessions", "The current number of sessions in a room",
                  ["backend", "room", "clienttype"], g.room_sessions),
            counter("signaling_server_messages_total", "The total number of signaling messages",
                    ["type"], st.server_messages),
            gauge("signaling_backend_session_limit", "The session limit of a backend (if set)",
                  ["backend"], g.session_limits),
            counter("signaling_backend_session_limit_exceeded_total",
                    "The number of times the session limit exceeded",
                    ["backend"], st.session_limit_exceeded),
            counter("signaling_backend_client_requests_total",
                    "The total number of backend client requests",
                    ["backend"], st.backend_requests),
            counter("signaling_backend_client_requests_errors_total",
                    "The total number of backend client requests that had an error",
                    ["backend", "error"], st.backend_errors),
            gauge("signaling_http_client_pool_connections",
                  "The current number of HTTP client connections per host",
                  ["host"], st.pool_connections),
            gauge("signaling_call_sessions", "The current number of sessions in a call",
                  ["backend", "room", "clienttype"], g.call_sessions),
            counter("signaling_call_sessions_total", "The total number of sessions in calls",
                    ["backend", "clienttype"], st.call_sessions_total),
            counter("signaling_call_rooms_total", "The total number of rooms with calls",
                    ["backend"], st.call_rooms_total),
            counter("signaling_throttle_delayed_total", "The total number of delayed requests",
                    ["action", "delay"], st.throttle_delayed),
            counter("signaling_throttle_bruteforce_total",
                    "The total number of rejected bruteforce requests",
                    ["action"], st.throttle_bruteforce),
            counter("signaling_client_countries_total",
                    "The total number of connections by country", ["country"], st.countries),
            counter("signaling_client_bytes_total",
                    "The total number of bytes sent to or received by clients",
                    ["direction"], _nonzero(incoming=st.bytes_in, outgoing=st.bytes_out)),
            counter("signaling_client_messages_total",
                    "The total number of messages sent to or received by clients",
                    ["direction"],
                    _nonzero(incoming=st.messages_in, outgoing=st.messages_out)),
        ]
        for fam in labelled:
            if fam.samples:
                yield fam
        yield GaugeMetricFamily(
            "signaling_backend_current", "The current number of configured backends",
            value=g.backends_current,
        )
        yield CounterMetricFamily(
            "relay_signaling_client_messages_ratelimited_total",
            "Client messages dropped over the per-connection message rate limit",
            value=st.messages_ratelimited,
        )
        yield CounterMetricFamily(
            "signaling_hub_sessions_resume_failed_total",
            "The total number of failed session resume requests",
            value=st.resume_failed_total,
        )
        if st.backend_durations:
            fam = HistogramMetricFamily(
                "signaling_backend_client_requests_duration",
                "The duration of backend client requests in seconds",
                labels=["backend"],
            )
            for backend, hist in sorted(st.backend_durations.items()):
                fam.add_metric([backend], hist.buckets(), hist.sum)
            yield fam
        if st.client_rtt.count:
            fam = HistogramMetricFamily(
                "signaling_client_rtt",
                "The roundtrip time of WebSocket ping messages in milliseconds",
            )
            fam.add_metric([], st.client_rtt.buckets(), st.client_rtt.sum)
            yield fam
