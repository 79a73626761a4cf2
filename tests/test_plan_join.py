"""The planner's accuracy join (`plan.results=DIR`, edgesplit/plan/accuracy.py) on fake run dirs read as
the report reads them."""
from pathlib import Path
from typing import Any, List

import pytest

from omegaconf import OmegaConf

from edgesplit.errors import ConfigError
from edgesplit.plan.accuracy import NOT_MEASURED, acc_cells, fastest_to_accuracy, join, result_dirs
from edgesplit.plan.space import Candidate, Figures
from tests.test_report import _run_dir, _summary

DEFAULTS = {"front": "1", "back": "1", "compressor": "prune", "chunks": "2"}
STEPS_PER_EPOCH = 4


def fake_sweep(root: Path) -> Path:
    """front 2 / back 1 quantize4 over seeds 0, 1 (best 90 and 92, each at epoch 2 of 3); front 1 /
    back 1 without overrides of them (the defaults: prune, 2 chunks), best 80; front 4 (no candidate)."""
    jobs: List[Any] = [(["partition.front=2", "compressor=quantize4", "seed=0"], 90.0),
                       (["partition.front=2", "compressor=quantize4", "seed=1"], 92.0),
                       (["seed=0"], 80.0), (["partition.front=4", "seed=0"], 70.0)]
    for i, (overrides, best) in enumerate(jobs):
        _run_dir(root / f"{i}_job", overrides, _summary(best))
    return root


def figures(*cands: Candidate) -> List[Figures]:
    return [Figures(c, 0.5 * (i + 1), 1.0, 1, 1, 1, 1, "cloud", {}) for i, c in enumerate(cands)]


QUANT, PRUNE, UNMEASURED = (Candidate(2, 1, "quantize4", 2), Candidate(1, 1, "prune", 2),
                            Candidate(1, 1, "none", 2))


def test_each_candidate_gets_its_seed_groups_accuracy(tmp_path: Path) -> None:
    plan = figures(UNMEASURED, QUANT, PRUNE)  # step 0.5, 1.0, 1.5 s
    results = join([str(fake_sweep(tmp_path))], [f.candidate for f in plan], DEFAULTS, STEPS_PER_EPOCH)
    quant = results.measured[QUANT]
    assert (quant.acc.mean, round(quant.acc.std or 0, 3), quant.acc.n) == (91.0, 1.414, 2)
    assert quant.epochs_to_best == 2
    assert results.measured[PRUNE].acc.mean == 80.0  # a run without the keys ran the defaults
    # 1.0 s/step x 4 steps/epoch x 2 epochs to the best
    assert results.time_to_train_s(plan[1]) == 8.0
    assert acc_cells(plan[1], results) == ["91.00 ± 1.41 (n=2)", "2", "8"]
    assert acc_cells(plan[0], results) == [NOT_MEASURED, "—", "—"]
    assert results.unmatched == ["4/1 prune x2"]
    # prune: 80 % in 12 s; quantize4: 91 % in 8 s, sooner and higher: the only one on the front
    assert fastest_to_accuracy(plan, results) == [plan[1]]


def test_bad_results_are_one_line_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for value, why in [(str(tmp_path / "missing"), "does not exist"),
                       (str(tmp_path / "empty"), "no run dirs under"),
                       (OmegaConf.create({"r": []}).r, "is invalid: a sweep dir")]:
        with pytest.raises(ConfigError, match=f"^plan\\.results.*{why}") as e:
            join(result_dirs(value), [QUANT], DEFAULTS, STEPS_PER_EPOCH)
        assert "\n" not in str(e.value)
