"""Soak: a relay process's memory stays flat under connection churn.

8 rounds of 300 TLS handshakes aborted after the server's first flight plus 100 WebSocket
connections reset after the upgrade, against `python -m relay` with a TURN-TLS listener and
signaling.  Before closed TLS streams released their reference cycle (and while full
collections practically never ran) each round added about 14 MiB; the full-size run (8 x
2,000) is `python -m benchmarks.bench_churn`, figures in README "Memory".
"""

from __future__ import annotations

from benchmarks.bench_churn import run_relay_churn, soak

MiB = 2**20


def test_rss_is_flat_across_rounds_of_tls_and_websocket_churn() -> None:
    with run_relay_churn() as target:
        rows = soak(target, rounds=8, handshakes=300, websockets=100, settle=0.5,
                    progress=False)
    assert all(r["failed"] == 0 for r in rows), rows
    rss = [r["rss"] for r in rows]
    # Round 1 warms up (buffers, caches, the first TLS sessions); from then on flat.
    assert max(rss[2:]) - rss[1] < 8 * MiB, [round(x / MiB, 1) for x in rss]
