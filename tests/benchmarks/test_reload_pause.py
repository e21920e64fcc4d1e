"""benchmarks.reload_pause runs end to end at a small size and reports every figure."""

from __future__ import annotations

import pytest

from benchmarks import reload_pause
from tests.turn.gateway_harness import free_port_range


def test_small_run_reports_apply_time_gaps_and_no_loss(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    lo, _hi = free_port_range(240, ("127.0.0.1",))
    assert reload_pause.main(["--listeners", "2", "--allocations", "20", "--reloads", "3",
                              "--spacing", "0.1", "--min-port", str(lo)]) == 0
    out = capsys.readouterr()
    assert "2 TURN-UDP listeners, 20 allocations" in out.err
    assert "apply: median" in out.out and "largest echo gap" in out.out and "lost " in out.out


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        reload_pause.main(["--listeners", "0"])
    assert exc.value.code == 2
