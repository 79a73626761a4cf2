"""The report's seed groups: runs that differ only in seed (or in keys that change no result) are one."""
from pathlib import Path

from edgesplit.report.runs import Run, group_runs, swept_keys


def _run(name: str, *overrides: str) -> Run:
    return Run(Path(name), name, dict(o.split("=", 1) for o in overrides))


def test_a_group_ignores_seed_and_resume_and_the_order_of_the_overrides() -> None:
    runs = [_run("0", "compressor=none", "schedule.lr=0.1", "seed=0"),
            _run("1", "schedule.lr=0.1", "compressor=none", "seed=1"),  # another order, same setting
            _run("2", "compressor=none", "schedule.lr=0.1", "seed=2", "resume=true"),  # a continued job
            _run("3", "compressor=none", "schedule.lr=0.4", "seed=0")]
    groups = group_runs(runs)
    assert [[r.name for r in g.runs] for g in groups] == [["0", "1", "2"], ["3"]]
    assert groups[0].overrides == {"compressor": "none", "schedule.lr": "0.1"}  # seed, resume left out
    assert groups[0].label(["schedule.lr"]) == "schedule.lr=0.1"


def test_resume_is_never_a_swept_key() -> None:
    """A sweep continued with resume=true: its jobs differ in `resume`, which changes no result."""
    runs = [_run("0", "seed=1"), _run("1", "seed=2", "resume=true")]
    assert swept_keys(runs) == ["seed"]
    assert swept_keys(runs[1:]) == ["seed"]  # one run: all its keys but resume
