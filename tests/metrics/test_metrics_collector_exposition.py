"""The TURN collector: exact STUNner names/types/labels and relay_ families, parsed back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.config import Config
from relay.health import HealthState
from relay.metrics.collector import (
    RELAY_FAMILIES,
    STUNNER_FAMILIES,
    TurnCollector,
    exported_names,
    install_collectors,
)
from relay.turn.stats import AUTH_FAILURE_REASONS, DROP_REASONS, TurnStats

BASE_RAW: dict[str, Any] = {
    "version": "v1",
    "auth": {"type": "static", "credentials": {"username": "u", "password": "p"}},
    "listeners": [{"name": "udp-a", "port": 0, "routes": ["media"]}],
    "clusters": [{"name": "media", "endpoints": ["10.0.0.0/8"]}],
}


def _bump_known_traffic(st: TurnStats) -> None:
    a = st.listener("udp-a")
    a.opened()
    a.opened()
    a.closed()  # 1 active, 2 total
    a.traffic.rx_packets += 10
    a.traffic.rx_bytes += 1000
    a.traffic.tx_packets += 7
    a.traffic.tx_bytes += 700
    m = st.cluster("media")
    m.opened()
    m.traffic.rx_packets += 3
    m.traffic.rx_bytes += 300
    m.traffic.tx_packets += 4
    m.traffic.tx_bytes += 444
    st.allocations_active = 1
    st.allocations_total = 2
    st.permissions_active = 5
    st.channels_active = 2
    st.count_request("allocate", "success")
    st.count_request("allocate", "401")
    st.count_request("allocate", "401")
    st.count_request("refresh", "success")
    st.auth_failures["bad_integrity"] += 3
    st.peer_refusals["loopback"] += 4
    st.drops["no_permission"] += 6
    st.quota_rejections["user"] += 1
    st.allocation_lifetime.observe(45.0)
    st.allocation_lifetime.observe(700.0)
    st.request_latency.observe(0.0003)
    st.request_latency.observe(0.002)
    st.request_latency.observe(5.0)


def _scrape(reg: CollectorRegistry) -> tuple[str, dict[tuple[str, str], Any]]:
    text = generate_latest(reg).decode()
    fams = {(f.name, f.type): f for f in text_string_to_metric_families(text)}
    return text, fams


def _value(fam: Any, sample: str, **labels: str) -> float:
    hits = [s.value for s in fam.samples if s.name == sample and s.labels == labels]
    assert len(hits) == 1, (sample, labels, fam.samples)
    return float(hits[0])


def _registry(config: Config, st: TurnStats, health: HealthState | None = None
              ) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=True)
    install_collectors(reg, st, config, health if health is not None else HealthState())
    return reg


def test_stunner_families_names_types_labels_values(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    st = TurnStats()
    _bump_known_traffic(st)
    _, fams = _scrape(_registry(cfg, st))

    # The parser turns counter family "x_total" into "x"; the gauge and the counter of the
    # same base name stay two families of different types.
    lc_gauge = fams[("stunner_listener_connections", "gauge")]
    lc_counter = fams[("stunner_listener_connections", "counter")]
    assert _value(lc_gauge, "stunner_listener_connections", name="udp-a") == 1
    assert _value(lc_counter, "stunner_listener_connections_total", name="udp-a") == 2
    # A configured listener without traffic yet is exported at zero.
    assert _value(lc_gauge, "stunner_listener_connections", name="udp-b") == 0

    pk = fams[("stunner_listener_packets", "counter")]
    assert _value(pk, "stunner_listener_packets_total", direction="rx", name="udp-a") == 10
    assert _value(pk, "stunner_listener_packets_total", direction="tx", name="udp-a") == 7
    by = fams[("stunner_listener_bytes", "counter")]
    assert _value(by, "stunner_listener_bytes_total", direction="rx", name="udp-a") == 1000
    assert _value(by, "stunner_listener_bytes_total", direction="tx", name="udp-a") == 700

    cc = fams[("stunner_cluster_connections", "gauge")]
    assert _value(cc, "stunner_cluster_connections", name="media") == 1
    assert _value(cc, "stunner_cluster_connections", name="backup") == 0
    cct = fams[("stunner_cluster_connections", "counter")]
    assert _value(cct, "stunner_cluster_connections_total", name="media") == 1
    cp = fams[("stunner_cluster_packets", "counter")]
    assert _value(cp, "stunner_cluster_packets_total", direction="rx", name="media") == 3
    cb = fams[("stunner_cluster_bytes", "counter")]
    assert _value(cb, "stunner_cluster_bytes_total", direction="tx", name="media") == 444

    aa = fams[("stunner_allocations_active", "gauge")]
    assert _value(aa, "stunner_allocations_active") == 1

    # Label sets are exactly STUNner's.
    for (name, _typ), fam in fams.items():
        if name.startswith("stunner_") and name != "stunner_allocations_active":
            for s in fam.samples:
                expected = {"name"} if "connections" in name else {"direction", "name"}
                assert set(s.labels) == expected, s
                if "direction" in s.labels:
                    assert s.labels["direction"] in ("rx", "tx")


def test_raw_text_has_two_families_with_their_own_type_lines(
    make_config: Callable[..., Config],
) -> None:
    text, _ = _scrape(_registry(make_config(), TurnStats()))
    lines = text.splitlines()
    assert "# TYPE stunner_listener_connections gauge" in lines
    assert "# TYPE stunner_listener_connections_total counter" in lines
    assert "# TYPE stunner_cluster_connections gauge" in lines
    assert "# TYPE stunner_cluster_connections_total counter" in lines
    # Every family has exactly one TYPE line (Prometheus rejects a second one).
    type_names = [ln.split()[2] for ln in lines if ln.startswith("# TYPE ")]
    assert len(type_names) == len(set(type_names))
    # Each exposed name has the type the collector table promises.
    types = {ln.split()[2]: ln.split()[3] for ln in lines if ln.startswith("# TYPE ")}
    for name, typ in {**STUNNER_FAMILIES, **RELAY_FAMILIES}.items():
        assert types[name] == typ, name


def test_relay_families_after_known_stats(make_config: Callable[..., Config]) -> None:
    st = TurnStats()
    _bump_known_traffic(st)
    _, fams = _scrape(_registry(make_config(), st))
    req = fams[("relay_turn_requests", "counter")]
    assert _value(req, "relay_turn_requests_total", method="allocate", result="401") == 2
    assert _value(req, "relay_turn_requests_total", method="allocate", result="success") == 1
    assert _value(req, "relay_turn_requests_total", method="refresh", result="success") == 1
    auth = fams[("relay_turn_auth_failures", "counter")]
    assert _value(auth, "relay_turn_auth_failures_total", reason="bad_integrity") == 3
    # Every fixed reason is present (zero included), and nothing else.
    assert {s.labels["reason"] for s in auth.samples
            if s.name.endswith("_total")} == set(AUTH_FAILURE_REASONS)
    drops = fams[("relay_turn_dropped_datagrams", "counter")]
    assert _value(drops, "relay_turn_dropped_datagrams_total", reason="no_permission") == 6
    assert {s.labels["reason"] for s in drops.samples
            if s.name.endswith("_total")} == set(DROP_REASONS)
    refusals = fams[("relay_turn_peer_refusals", "counter")]
    assert _value(refusals, "relay_turn_peer_refusals_total", reason="loopback") == 4
    quota = fams[("relay_turn_quota_rejections", "counter")]
    assert _value(quota, "relay_turn_quota_rejections_total", kind="user") == 1
    assert _value(fams[("relay_turn_allocations", "counter")],
                  "relay_turn_allocations_total") == 2
    assert _value(fams[("relay_turn_permissions_active", "gauge")],
                  "relay_turn_permissions_active") == 5
    assert _value(fams[("relay_turn_channels_active", "gauge")],
                  "relay_turn_channels_active") == 2

    life = fams[("relay_turn_allocation_lifetime_seconds", "histogram")]
    assert _value(life, "relay_turn_allocation_lifetime_seconds_count") == 2
    assert _value(life, "relay_turn_allocation_lifetime_seconds_sum") == 745.0
    assert _value(life, "relay_turn_allocation_lifetime_seconds_bucket", le="30.0") == 0
    assert _value(life, "relay_turn_allocation_lifetime_seconds_bucket", le="60.0") == 1
    assert _value(life, "relay_turn_allocation_lifetime_seconds_bucket", le="1200.0") == 2
    assert _value(life, "relay_turn_allocation_lifetime_seconds_bucket", le="+Inf") == 2

    lat = fams[("relay_turn_request_duration_seconds", "histogram")]
    assert _value(lat, "relay_turn_request_duration_seconds_bucket", le="0.0005") == 1
    assert _value(lat, "relay_turn_request_duration_seconds_bucket", le="0.0025") == 2
    assert _value(lat, "relay_turn_request_duration_seconds_bucket", le="1.0") == 2
    assert _value(lat, "relay_turn_request_duration_seconds_bucket", le="+Inf") == 3
    assert _value(lat, "relay_turn_request_duration_seconds_count") == 3


def test_quota_limit_and_ready_gauges(make_config: Callable[..., Config]) -> None:
    raw = {**BASE_RAW, "turn": {"total_quota": 500}}
    cfg = make_config(raw=raw)
    health = HealthState()
    reg = _registry(cfg, TurnStats(), health)
    _, fams = _scrape(reg)
    assert _value(fams[("relay_turn_allocations_limit", "gauge")],
                  "relay_turn_allocations_limit") == 500
    assert _value(fams[("relay_ready", "gauge")], "relay_ready") == 0
    health.started = True
    _, fams = _scrape(reg)
    assert _value(fams[("relay_ready", "gauge")], "relay_ready") == 1


def test_counters_are_live_between_scrapes(make_config: Callable[..., Config]) -> None:
    st = TurnStats()
    reg = _registry(make_config(), st)
    a = st.listener("udp-a")
    a.opened()
    a.traffic.rx_bytes += 100
    _, f1 = _scrape(reg)
    a.traffic.rx_bytes += 50  # the same allocation keeps going: no session end needed
    _, f2 = _scrape(reg)
    fam1 = f1[("stunner_listener_bytes", "counter")]
    fam2 = f2[("stunner_listener_bytes", "counter")]
    assert _value(fam1, "stunner_listener_bytes_total", direction="rx", name="udp-a") == 100
    assert _value(fam2, "stunner_listener_bytes_total", direction="rx", name="udp-a") == 150


def test_process_platform_gc_collectors_on_our_registry(
    make_config: Callable[..., Config],
) -> None:
    reg = _registry(make_config(), TurnStats())
    names = exported_names(reg)
    for n in ("python_gc_objects_collected_total", "python_info"):
        assert n in names
    import sys

    if sys.platform.startswith("linux"):
        for n in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                  "process_virtual_memory_bytes", "process_open_fds"):
            assert n in names


def test_install_is_idempotent_and_tolerates_other_process_collectors(
    make_config: Callable[..., Config],
) -> None:
    from prometheus_client.process_collector import ProcessCollector

    cfg = make_config()
    st = TurnStats()
    reg = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=reg)  # another part registered process metrics first
    first = install_collectors(reg, st, cfg)
    second = install_collectors(reg, st, cfg)
    assert first is second
    text = generate_latest(reg).decode()
    assert text.count("# TYPE stunner_allocations_active gauge") == 1
    assert text.count("# TYPE process_cpu_seconds_total counter") == 1
    assert text.count("# TYPE python_info gauge") == 1


def test_unconfigured_names_from_stats_are_exported_too() -> None:
    st = TurnStats()
    st.listener("late").opened()
    reg = CollectorRegistry(auto_describe=True)
    reg.register(TurnCollector(st))
    _, fams = _scrape(reg)
    fam = fams[("stunner_listener_connections", "gauge")]
    assert _value(fam, "stunner_listener_connections", name="late") == 1


def test_scrape_does_not_depend_on_allocation_count(make_config: Callable[..., Config]) -> None:
    # The collector reads aggregated ints: 10,000 allocations or 1 give the same families.
    st = TurnStats()
    reg = _registry(make_config(), st)
    text_small = generate_latest(reg).decode()
    st.allocations_active = 10_000
    st.allocations_total = 10_000
    text_big = generate_latest(reg).decode()
    fam_lines = lambda t: [ln for ln in t.splitlines()  # noqa: E731
                           if ln.startswith(("stunner_", "relay_"))]
    assert len(fam_lines(text_small)) == len(fam_lines(text_big))
    assert "stunner_allocations_active 10000.0" in text_big.splitlines()
