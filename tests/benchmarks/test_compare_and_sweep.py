"""compare_coturn and sweep: output parsing, tables, charts and a short real run on coturn."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

import benchmarks.compare_coturn as compare
from benchmarks.compare_coturn import build_parser, parse_uclient, table, uclient_once
from benchmarks.profile_relay import fold, report
from benchmarks.servers import coturn_available, run_coturn
from benchmarks.sweep import build_parser as sweep_parser
from benchmarks.sweep import main as sweep_main
from benchmarks.sweep import plot
from benchmarks.turn_load import echo_peers

UCLIENT_TAIL = """\
8: : start_mclient: tot_send_msgs=5000, tot_recv_msgs=4990
8: : start_mclient: tot_send_bytes ~ 500000, tot_recv_bytes ~ 499000
8: : Total transmit time is 8
8: : Total lost packets 10 (0.200000%), total send dropped 0 (0.000000%)
8: : Average round trip delay 0.030200 ms; min = 0 ms, max = 4 ms
8: : Average jitter 1.439600 ms; min = 0 ms, max = 7 ms
"""


def test_parse_uclient_summary() -> None:
    fig = parse_uclient(UCLIENT_TAIL)
    assert fig == {"sent": 5000.0, "received": 4990.0, "lost": 10.0, "loss_pct": 0.2,
                   "rtt_avg_ms": 0.0302, "rtt_min_ms": 0.0, "rtt_max_ms": 4.0,
                   "transmit_seconds": 8.0}
    assert parse_uclient("nothing useful") == {}


def test_table_medians_and_ratios() -> None:
    text, med = table({"channel": {"coturn": [100.0, 300.0, 200.0], "relay": [90.0, 70.0, 80.0]},
                       "memory": {"coturn": [2.0], "relay": []}})
    assert med["channel"]["coturn"] == 200.0 and med["channel"]["relay"] == 80.0
    assert med["channel"]["ratio"] == pytest.approx(0.4)
    assert math.isnan(med["memory"]["ratio"])
    assert "relay/coturn" in text and "lower is better" in text


def test_compare_parser_defaults() -> None:
    args = build_parser().parse_args([])
    assert args.generator == "ours" and args.rounds >= 2 and args.loss == 1.0
    assert sweep_parser().parse_args([]).mode == "channel"


def test_rate_search_repeats_a_failed_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that fails once (machine noise) is repeated before the rate counts as
    saturated; a rate that fails every attempt ends the ramp."""
    calls: list[float] = []
    flaky = {16000.0}  # fails on its first attempt only

    def fake_probe(srv: object, mode: str, rate: float, args: object,
                   peer: object) -> SimpleNamespace:
        calls.append(rate)
        bad = rate >= 40000 or (rate in flaky and calls.count(rate) == 1)
        return SimpleNamespace(loss_pct=5.0 if bad else 0.0, offered_pps=rate,
                               delivered_pps=rate, rtt_p99_ms=0.1, server_cpu_pct=10.0)

    monkeypatch.setattr(compare, "probe", fake_probe)
    monkeypatch.setattr(compare, "log", lambda msg: None)
    args = build_parser().parse_args(["--start-rate", "10000", "--bisect", "0"])
    srv = SimpleNamespace(name="fake")
    rate, _res = compare.find_max_rate(srv, "channel", args, ("127.0.0.1", 9))  # type: ignore[arg-type]
    assert rate == 25600.0
    assert calls == [10000.0, 16000.0, 16000.0, 25600.0, 40960.0, 40960.0]
    args = build_parser().parse_args(["--start-rate", "10000", "--bisect", "0", "--confirm", "0"])
    calls.clear()
    rate, _res = compare.find_max_rate(srv, "channel", args, ("127.0.0.1", 9))  # type: ignore[arg-type]
    assert rate == 10000.0


def test_sweep_rejects_bad_rates(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sweep_main(["--rates", "abc"])
    assert "--rates" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib (the benchmarks extra) is not installed")
def test_sweep_plot_writes_png(tmp_path: Path) -> None:
    data = {"setup": {"mode": "channel", "clients": 2, "size": 64},
            "conditions": {"cpu": "test", "cpus": 2},
            "points": {s: [{"offered": r, "delivered": r * 0.9, "rtt_p99_ms": 0.5 + r / 1e4}
                           for r in (1000.0, 2000.0)] for s in ("coturn", "relay")}}
    src = tmp_path / "sweep.json"
    src.write_text(json.dumps(data))
    png = tmp_path / "sweep.png"
    assert sweep_main(["--plot-only", str(src), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot(data, str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").stat().st_size > 1000


@pytest.mark.skipif(not coturn_available(), reason="coturn is not installed")
def test_uclient_generator_against_coturn() -> None:
    args = argparse.Namespace(clients=2, uclient_messages=20, uclient_interval=5, size=64,
                              uclient_timeout=60.0)
    with echo_peers("127.0.0.1") as peer, run_coturn() as srv:
        fig = uclient_once(srv, peer, False, args)
    assert fig["sent"] == 40
    assert fig["received"] > 0 and fig["delivered_pps"] > 0


def test_profile_folding_counts_self_and_inclusive_time() -> None:
    raw = ("main (/x/relay/net/gw.py:10);drain (/x/relay/net/gw.py:50) 3\n"
           "main (/x/relay/net/gw.py:10);drain (/x/relay/net/gw.py:52) 1\n"
           "main (/x/relay/net/gw.py:10);get_events (/y/site-packages/trio/_io.py:9) 4\n"
           "garbage line\n")
    self_c, incl, total = fold(raw)
    assert total == 8
    assert self_c["drain (relay/net/gw.py:50)"] == 3
    assert incl["main (relay/net/gw.py)"] == 8 and incl["drain (relay/net/gw.py)"] == 4
    text = report(raw, 5)
    assert "50.0%  drain (relay/net/gw.py)" in text
    assert "50.0%  get_events (trio/_io.py)" in text
