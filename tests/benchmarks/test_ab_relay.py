"""The A/B driver runs two relay trees under the same load and reports both (no speed is
asserted: only that traffic flowed through each and the summary is complete)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import ab_relay

ROOT = Path(__file__).resolve().parents[2]


def test_ab_of_a_tree_against_itself(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    rc = ab_relay.main(["--base", str(ROOT), "--new", str(ROOT), "--rounds", "1",
                        "--modes", "channel", "-n", "2", "-r", "300", "-t", "0.5",
                        "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [(r["tree"], r["mode"]) for r in data["runs"]] == [("base", "channel"),
                                                              ("new", "channel")]
    assert all(r["delivered_pps"] > 0 and r["cpu_pct"] >= 0 for r in data["runs"])
    summary = data["summary"]["channel"]
    assert set(summary) == {"base_us", "new_us", "ratio"}
    assert all(math.isfinite(v) for v in summary.values())


@pytest.mark.parametrize("argv", [
    ["--base", "/nonexistent-tree"],
    ["--base", str(ROOT), "--modes", "tcp"],
    ["--base", str(ROOT), "--rounds", "0"],
    ["--base", str(ROOT), "--rate", "0"],
])
def test_bad_arguments_are_refused_with_a_message(argv: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ab_relay.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
