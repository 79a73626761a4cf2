"""The planner's validation (edgesplit/plan/validate.py, validation_report.py): which candidates it
runs, the agreement figures, its refusals, and one real run on dist."""
import json
from pathlib import Path
from typing import List, Optional

import pytest

from edgesplit.errors import ConfigError
from edgesplit.plan.__main__ import main as plan_main
from edgesplit.plan.inputs import plan_inputs
from edgesplit.plan.space import Candidate, Figures
from edgesplit.plan import calibrate
from edgesplit.plan.validate import Row, check_validation, chosen
from edgesplit.plan.validation_report import agreement, gathered, validation_table, write_validation
from tests.dist_helpers import SECRET, REPO
from tests.sizes import TEST_MODEL, TINY


def _figures(n: int) -> List[Figures]:
    return [Figures(Candidate(1, 1, f"c{i}", 4), 1.0 + i, 1.0, 1, 1, 1, 1, "cloud", {}) for i in range(n)]


def test_validation_runs_the_top_half_and_a_spread_of_the_rest() -> None:
    figures = _figures(10)
    names = [f.candidate.compressor for f in chosen(figures, 4)]
    assert names == ["c0", "c1", "c2", "c9"]  # top 2, then the rest from its first to its last
    assert [f.candidate.compressor for f in chosen(figures, 5)] == ["c0", "c1", "c2", "c3", "c9"]
    assert chosen(figures, 30) == figures


def _row(rank: int, step: float, measured_step: Optional[float], up: int = 100,
         measured_up: float = 100.0) -> Row:
    predicted = {"step_s": step, "up_bytes": up, "down_bytes": 50, "edge_peak_bytes": 1000}
    measured = None if measured_step is None else {"step_s": measured_step, "up_bytes": measured_up,
                                                   "down_bytes": 50.0, "edge_peak_bytes": 800}
    return Row(rank, 1, 1, "none", 4, predicted, measured, None if measured else "PeerError: gone")


def test_agreement_by_hand(tmp_path: Path) -> None:
    rows = [_row(1, 1.0, 1.25), _row(2, 2.0, 1.0), _row(3, 3.0, 4.0, measured_up=101.0), _row(4, 4.0, None)]
    a = agreement(rows)
    assert a is not None and a.rows == 3
    # |1/1.25 - 1| = 0.2, |2/1 - 1| = 1, |3/4 - 1| = 0.25: median 0.25, max 1
    assert (a.step_err_median, a.step_err_max) == (pytest.approx(0.25), pytest.approx(1.0))
    assert a.memory_err_median == pytest.approx(0.25)  # 1000 predicted, 800 measured
    assert a.bytes_equal == 2  # the third's uplink is one byte off
    assert a.fastest_measured_rank == 2  # measured 1.0 s: the plan's second
    rendered = validation_table(rows)
    assert "| 4 | 1 | 1 | none | 4 | 4 | failed: PeerError: gone |" in rendered
    assert "| 1 | 1 | 1 | none | 4 | 1 | 1.25 | -20.0% | 150 | 150 | yes |" in rendered
    write_validation(tmp_path / "slow_link", rows, {})  # the settings gathered, one row each
    row = "| slow_link | 3 | 25.0% | 100.0% | 2 of 3 | 25.0% | 25.0% | 2 |"
    assert gathered(tmp_path).splitlines()[-1] == row


@pytest.mark.parametrize("override, line", [
    ("pipeline_backend=gpipe", "plan.validate runs the candidates on pipeline_backend=dist"),
    ("plan.cloud_speedup=2", "drop plan.cloud_speedup and plan.profile"),
    ("plan.validate_steps=2", "plan.validate_steps=2 is invalid: must be >= 3"),
])
def test_a_validation_this_host_cannot_measure_is_refused(override: str, line: str) -> None:
    inputs = plan_inputs([*TINY, *TEST_MODEL, "plan.validate=2", override])
    with pytest.raises(ConfigError, match=line):
        check_validation(inputs)


@pytest.mark.slow
def test_a_validation_measures_the_bytes_the_plan_predicts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Two candidates of the test model run on dist for 3 steps: the meter's bytes per step equal
    the plan's to the byte; the measured figures are written beside the predicted ones. The plan was
    calibrated first (its references run on dist), once: planning again reads it from the cache."""
    monkeypatch.setenv("PYTHONPATH", REPO)  # the cloud process imports the test model
    monkeypatch.setenv("EDGESPLIT_SECRET", SECRET)
    argv = [*TINY, *TEST_MODEL, "plan.repeats=1", "plan.warmup=0", "plan.fronts=[1,2]", "plan.backs=[1]",
            "plan.compressors=[quantize4]", "plan.chunks=[2]", "plan.validate=2", "plan.validate_steps=3",
            "plan.validate_warmup=1", f"plan.cache_dir={tmp_path}", f"plan.out_dir={tmp_path / 'out'}",
            "plan.calibrate=2"]
    assert plan_main(argv) == 0
    fitted = json.loads((tmp_path / "out" / "plan.json").read_text())["profiles"]["2"]["calibrations"]
    assert list(fitted) == ["chunks=2 order=gpipe checkpoint=except_last compressor=quantize4 "
                            "edge_slowdown=1"]
    assert all(v >= 0 for side in ("edge", "cloud") for v in next(iter(fitted.values()))[side].values())
    record = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert record["agreement"]["rows"] == 2 and record["agreement"]["bytes_equal"] == 2
    assert all(r["measured"]["step_s"] > 0 and r["measured"]["edge_peak_bytes"] > 0 for r in record["rows"])
    assert "bytes per step equal to the meter's in 2 of 2" in capsys.readouterr().out
    assert all(r["measured"]["edge_compute_s"] > 0 and r["measured"]["cloud_compute_s"] > 0
               for r in record["rows"])
    monkeypatch.setattr(calibrate, "measure", lambda *a: pytest.fail("calibrated again"))
    assert plan_main([*argv, "plan.validate=0"]) == 0
