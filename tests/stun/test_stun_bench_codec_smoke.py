"""The codec benchmark's cases run and do real work (no timing is asserted)."""

from __future__ import annotations

from benchmarks import bench_codec
from relay.stun import Message, decode, verify_fingerprint


def test_benchmark_cases_produce_valid_results() -> None:
    cases = bench_codec.build_cases()
    assert len(cases) == 9
    results = {name: fn() for name, fn in cases.items()}
    verified = results["decode+verify_integrity+fingerprint (auth. Allocate)"]
    assert verified is True
    decoded = results["decode (auth. Allocate)"]
    assert isinstance(decoded, Message) and decoded.attributes
    encoded = results["encode Allocate success + MI + FP"]
    assert isinstance(encoded, bytes) and verify_fingerprint(decode(encoded))
    assert results["parse_channel_data (160 B, reused buffer)"] == (0x4001, 160)
    scanned = results["scan_send_indication (160 B, reused buffer)"]
    assert scanned is not None and scanned[:2] == ("198.51.100.7", 5004)  # type: ignore[index]
    indication = results["data_indication (IPv4 peer, 160 B)"]
    assert isinstance(indication, bytes) and len(decode(indication).attributes) == 2
    assert results["StreamFramer.feed (8 x 160 B ChannelData + Allocate)"] == 9
    table = results["first-byte demux x4: demux_table index"]
    assert table == results["first-byte demux x4: two comparisons (inline rule)"] == 1 + 0 + 1 + 2


def test_benchmark_main_quick_run(capsys: object) -> None:
    assert bench_codec.main(["--quick", "--repeat", "1", "--passes", "1"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "python 3." in out and "ns/op" in out and "data_indication" in out
