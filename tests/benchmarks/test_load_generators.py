"""The load generators run end to end against real servers on loopback (short, low rate).

They check that traffic really flows through the relay and that results are complete and
consistent; they never assert a speed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from benchmarks.report import RttRecorder, check_loopback, parse_hostport, percentile, summarize
from benchmarks.servers import ServerProcess, coturn_available, run_coturn, run_relay
from benchmarks.turn_alloc import AllocConfig, run_alloc
from benchmarks.turn_load import LoadConfig, run_load
from benchmarks.turnclient import MISMATCH_RETRIES, TurnClient, TurnError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["coturn", "relay"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    if request.param == "coturn":
        if not coturn_available():
            pytest.skip("coturn's turnserver is not installed (apt install coturn)")
        with run_coturn() as srv:
            yield srv
    else:
        if importlib.util.find_spec("relay.net.gateway") is None:
            pytest.skip("relay's TURN gateway (relay.net.gateway) is not in this tree yet")
        with run_relay() as srv:
            yield srv


@pytest.mark.parametrize("mode", ["channel", "send"])
def test_turn_load_relays_and_reports(server: ServerProcess, mode: str) -> None:
    cfg = LoadConfig(server=server.address, clients=4, mode=mode, size=64, rate=400,
                     duration=1.0, workers=2, server_pid=server.pid, progress=False)
    res = run_load(cfg)
    assert res.clients_ok == 4 and res.setup_failures == 0
    # About rate * duration packets offered; nearly all come back through the relay.
    assert 300 <= res.sent <= 500
    assert res.received >= res.sent * 0.9
    assert res.received <= res.sent
    assert 0.0 <= res.loss_pct <= 10.0
    assert 0 < res.rtt_p50_ms <= res.rtt_p90_ms <= res.rtt_p99_ms <= res.rtt_max_ms
    assert res.delivered_mbps > 0
    assert res.setup_p50_ms > 0 and res.setup_max_ms >= res.setup_p50_ms
    assert res.server_cpu_pct is not None and res.server_cpu_pct >= 0
    assert server.name in ("coturn", "relay")
    assert mode in res.summary_line()


def test_turn_alloc_churn_and_memory(server: ServerProcess) -> None:
    cfg = AllocConfig(server=server.address, concurrency=2, duration=0.5, max_cycles=20,
                      workers=1, memory=(20,), server_pid=server.pid, settle=0.1,
                      progress=False)
    res = run_alloc(cfg)
    assert res.churn_errors == 0, res.churn_error_samples
    assert 1 <= res.churn_cycles <= 20
    assert res.churn_rate > 0
    assert 0 < res.cycle_p50_ms <= res.cycle_p99_ms
    assert len(res.memory) == 1
    mem = res.memory[0]
    assert mem["allocations"] == 20 and mem["failed"] == 0
    assert mem["bytes_per_allocation"] == mem["rss_delta"] / 20


def test_turn_load_cli_writes_json(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    host, port = server.address
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.turn_load", "--server", f"{host}:{port}",
         "-n", "2", "-r", "200", "-t", "0.5", "-q", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("turn_load: mode=channel clients=2/2")
    data = json.loads(out.read_text())
    assert data["received"] > 0 and data["config"]["clients"] == 2


def test_cli_refuses_remote_targets_and_bad_arguments() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["--server", "192.0.2.1:3478"], ["-n", "0"], ["-s", "4"], ["-t", "9999"]):
        proc = subprocess.run([sys.executable, "-m", "benchmarks.turn_load", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=30, env=env)
        assert proc.returncode != 0
        assert "error" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmarks.turn_alloc", "--memory", "x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode != 0 and "--memory" in proc.stderr


def test_report_helpers() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    assert math.isnan(percentile([], 50))
    s = summarize(float(i) for i in range(1, 101))
    assert (s["p50"], s["p90"], s["p99"], s["max"]) == (50.0, 90.0, 99.0, 100.0)
    rec = RttRecorder(limit=8)
    for i in range(100):
        rec.add(float(i))
    assert rec.count == 100 and rec.max == 99.0 and len(rec.samples) < 8 and rec.stride > 1
    assert parse_hostport("[::1]:3479", 1) == ("::1", 3479)
    assert parse_hostport("127.0.0.1", 3478) == ("127.0.0.1", 3478)
    assert check_loopback("localhost", "x", False) == "127.0.0.1"
    with pytest.raises(SystemExit):
        check_loopback("192.0.2.1", "x", False)
    assert check_loopback("192.0.2.1", "x", True) == "192.0.2.1"


def test_allocate_moves_to_a_new_port_on_allocation_mismatch(server: ServerProcess) -> None:
    """A 437 on Allocate (the server still holds an allocation on our 5-tuple, as after a
    recently deleted allocation whose port the kernel hands out again) is answered from a
    fresh port when the caller allows it; without that it is an error."""

    async def main() -> tuple[int, int, int, int]:
        async with TurnClient(server.address, "user", "pass", rto=0.25) as first:
            await first.allocate()
            port = first.local_address[1]
        # first's socket is closed; the server keeps its allocation on (127.0.0.1, port).
        async with TurnClient(server.address, "user", "pass", rto=0.25,
                              local_port=port) as plain:
            with pytest.raises(TurnError) as err:
                await plain.allocate()
        async with TurnClient(server.address, "user", "pass", rto=0.25,
                              local_port=port) as retrying:
            await retrying.allocate(new_port_on_mismatch=MISMATCH_RETRIES)
            moved_to = retrying.local_address[1]
            mismatches = retrying.mismatches
            await retrying.refresh(0)
        # Clean up the first allocation from its own 5-tuple.
        async with TurnClient(server.address, "user", "pass", rto=0.25,
                              local_port=port) as cleanup:
            await cleanup.refresh(0)
        return err.value.code, port, moved_to, mismatches

    code, port, moved_to, mismatches = trio.run(main)
    assert code == 437
    assert mismatches == 1 and moved_to != port
