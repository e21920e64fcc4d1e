"""The process collector caches the open-fd count (listing /proc/self/fd is slow with
thousands of relay sockets) and reports the other process metrics fresh."""

from __future__ import annotations

import socket
import sys

import pytest
from prometheus_client import CollectorRegistry

from relay.metrics.collector import _ProcessCollector

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _values(c: _ProcessCollector) -> dict[str, float]:
    return {s.name: s.value for fam in c.collect() for s in fam.samples}


def test_open_fds_is_cached_and_refreshed() -> None:
    c = _ProcessCollector(registry=CollectorRegistry())
    first = _values(c)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "process_max_fds", "process_virtual_memory_bytes",
            "process_start_time_seconds"} <= set(first)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
    try:
        assert _values(c)["process_open_fds"] == first["process_open_fds"]  # cached
        c.FD_CACHE_SECONDS = 0.0
        assert _values(c)["process_open_fds"] >= first["process_open_fds"] + 5
    finally:
        for s in socks:
            s.close()
