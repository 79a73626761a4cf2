"""The report's header: each sweep's command as Hydra recorded it, its dir, the date, and the
overrides every run shares."""
import datetime
from pathlib import Path

import yaml

from edgesplit.report.build import build_report, find_runs
from tests.test_report import _run_dir, _summary


def _hydra_record(path: Path, task: list[str]) -> None:
    path.write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))


def test_the_header_says_what_was_run_when_and_what_every_run_shares(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun" / "lr"
    for job, lr in enumerate(("0.1", "0.2")):
        _run_dir(sweep / str(job), ["data=digits", f"schedule.lr={lr}", "seed=0"], _summary(90.0))
    _hydra_record(sweep / "multirun.yaml",
                  ["data=digits", "schedule.lr=0.1,0.2", "seed=0", "hydra.sweep.dir=x y"])
    single = _run_dir(tmp_path / "outputs" / "one", ["data=digits", "schedule.lr=0.3"], _summary(80.0))
    _hydra_record(single / ".hydra" / "hydra.yaml", ["data=digits", "schedule.lr=0.3"])
    text = build_report(find_runs([sweep, single]))
    head = text.split("## Runs")[0].splitlines()
    assert head[2:4] == [
        f"- command: `python train.py -m data=digits schedule.lr=0.1,0.2 seed=0 'hydra.sweep.dir=x y'` "
        f"(sweep dir `{sweep}`)",
        f"- command: `python train.py data=digits schedule.lr=0.3` (run dir `{single}`)"]
    assert head[4].startswith(f"- date: {datetime.date.today():%Y-%m-%d} ")
    assert head[5] == "- every run: `data=digits`"  # seed=0 is not the single run's
    assert build_report(find_runs([sweep])).split("## Runs")[0].splitlines()[-2] == \
        "- every run: `data=digits` `seed=0`"
