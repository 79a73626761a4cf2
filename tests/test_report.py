"""Tests of edgesplit.report.build on fake Hydra run dirs: tables, pivots, backends, curves, CLI."""
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from matplotlib.figure import Figure

from edgesplit.report import build as report
from edgesplit.boundary.meter import CommFigures, CommMeter
from edgesplit.report.curves import run_label
from edgesplit.report.tables import run_cell
from edgesplit.report.build import (ReportError, build_report, find_runs, human_bytes, main,
                                    plot_curves, swept_keys, write_report)
from edgesplit.logs.summary import EpochRecord, RunSummary, SideStats, write_summary

REPO = Path(__file__).resolve().parents[1]
# The seed's first study (front x back -> val_acc1 %).
SEED_GRID = {(1, 1): 92.14, (2, 1): 92.22, (3, 1): 92.63, (1, 2): 90.84, (2, 2): 91.69,
             (3, 2): 92.59, (1, 3): 91.12, (2, 3): 91.72, (3, 3): 92.85}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _comm(overhead: int = 0) -> CommFigures:
    """One batch: 1 MB up of 10 MB raw at the front boundary, 200 kB down of 1.4 MB raw at the back."""
    meter = CommMeter()
    meter.record("front", "forward", 1_000_000, 10_000_000)
    meter.record("back", "forward", 200_000, 1_400_000)
    meter.record_overhead("up", overhead)
    meter.record_overhead("down", overhead)
    meter.end_batch()
    return meter.summary()


def _summary(best: float, done: int = 3, comm: Optional[CommFigures] = None, **changes: Any) -> RunSummary:
    """A 3-epoch gpipe run after `done` epochs, val acc1 best-1.5, best, best-0.5; `changes` last."""
    summary = RunSummary(backend="gpipe", epochs_planned=3, eval_compressed=True, overrides=[])
    sides = {"edge": SideStats(1234, 123_456_789, 0.05), "cloud": SideStats(99999, 100_000_000, 0.07)}
    for epoch, acc in enumerate([best - 1.5, best, best - 0.5][:done], 1):
        record = EpochRecord(epoch, lr=0.4, train_loss=0.25, train_acc1=93.0, val_loss=0.3, val_acc1=acc,
                             val_acc5=99.0, time_per_batch_s=0.12)
        summary.record_epoch(record, batch_size=128, comm=comm or _comm(), sides=sides)
    return dataclasses.replace(summary, **changes)


def _run_dir(path: Path, overrides: list[str], summary: Optional[RunSummary]) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (path / ".hydra" / "config.yaml").write_text("seed: 0\nmodel:\n  name: mobilenetv2\n")
    if summary is not None:
        write_summary(path, summary)
    return path


@pytest.fixture
def report_grid(tmp_path: Path) -> Path:
    """A 3x3 partition.front x partition.back multirun; (2,2) failed, (3,3) has no summary."""
    root = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for front in (1, 2, 3):
        for back in (1, 2, 3):
            ov = [f"partition.front={front}", f"partition.back={back}", "experiment=edge_grid"]
            summary: Optional[RunSummary] = _summary(SEED_GRID[front, back])
            if (front, back) == (2, 2):
                summary = _summary(50.0, done=2, status="failed",
                                   error="training diverged: loss is nan at epoch 3")
            if (front, back) == (3, 3):
                summary = None
            _run_dir(root / f"{job}_partition.front={front},partition.back={back}", ov, summary)
            job += 1
    return root


def _data(line: Any, axis: str) -> list[float]:
    return np.asarray(line.get_xdata() if axis == "x" else line.get_ydata()).tolist()


def _table(text: str, heading: str) -> list[list[str]]:
    """The markdown table under the first heading that starts with `heading`, as cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])])
        elif rows:
            break
    assert all(set(c) == {"-"} for c in rows[1]), "the second line must be the separator"
    return [rows[0]] + rows[2:]


# ------------------------------------------------------------------------------------ grid
def test_grid_pivot_has_the_known_values(report_grid: Path) -> None:
    runs = find_runs([report_grid])
    assert [r.name for r in runs] == [str(i) for i in range(9)]
    assert swept_keys(runs) == ["partition.front", "partition.back"]  # experiment= is constant
    pivot = _table(build_report(runs), "## best_val_acc1")
    assert pivot == [
        ["partition.front \\ partition.back", "1", "2", "3"],
        ["1", "92.14", "90.84", "91.12"],
        ["2", "92.22", "50.00 (failed)", "91.72"],
        ["3", "92.63", "92.59", "—"],
    ]


def test_grid_runs_table_lists_failed_and_summaryless_runs(report_grid: Path) -> None:
    table = _table(build_report(find_runs([report_grid])), "## Runs")
    header, rows = table[0], table[1:]
    assert header[:6] == ["run", "partition.front", "partition.back", "status", "epochs",
                          "best val acc1"]
    assert "overhead up / down" not in header  # no run has transport overhead
    assert len(rows) == 9
    by_run = {r[0]: dict(zip(header, r)) for r in rows}
    assert by_run["0"]["status"] == "finished"
    assert by_run["0"]["best val acc1"] == "92.14" and by_run["0"]["final val acc1"] == "91.64"
    assert by_run["0"]["peak memory"] == "123 MB" and by_run["0"]["up/batch"] == "1 MB"
    assert by_run["0"]["down/batch"] == "200 kB" and by_run["0"]["compression"] == "9.50x"
    assert by_run["0"]["time/batch (s)"] == "0.120" and by_run["0"]["samples/s"] == "1067"
    assert by_run["4"]["status"] == "failed: training diverged: loss is nan at epoch 3"
    assert by_run["4"]["epochs"] == "2"
    assert by_run["8"]["status"] == "no summary"
    assert by_run["8"]["partition.front"] == "3" and by_run["8"]["best val acc1"] == "—"


def test_running_sweep_shows_progress_and_partial_curves(tmp_path: Path) -> None:
    _run_dir(tmp_path / "0_schedule.lr=0.1", ["schedule.lr=0.1"], _summary(60.0, done=2, epochs_planned=200))
    _run_dir(tmp_path / "1_schedule.lr=0.2", ["schedule.lr=0.2"], None)
    (tmp_path / "1_schedule.lr=0.2" / "summary.json").write_text('{"status": "runn')  # mid-write
    runs = find_runs([tmp_path])
    assert [r.status for r in runs] == ["running 2/200",
                                        "unreadable summary.json (JSONDecodeError)"]
    fig = plot_curves(runs)
    (line,) = fig.axes[0].get_lines()
    assert _data(line, "x") == [1, 2] and _data(line, "y") == [58.5, 60.0]
    assert line.get_label() == "schedule.lr=0.1"


def test_an_interrupted_run_shows_as_interrupted(tmp_path: Path) -> None:
    stopped = _summary(70.0, done=2)
    stopped.interrupt("interrupted in epoch 3/3")
    _run_dir(tmp_path / "0_seed=1", ["seed=1"], stopped)
    _run_dir(tmp_path / "1_seed=2", ["seed=2"], _summary(71.0))
    runs = find_runs([tmp_path])
    assert [r.status for r in runs] == ["interrupted 2/3", "finished"]
    row = report.runs_table(runs, ["seed"]).splitlines()[2]
    assert [cell.strip() for cell in row.split("|")[1:5]] == ["0", "1", "interrupted 2/3", "2"]
    assert run_cell(runs[0], report.BEST) == "70.00 (interrupted)"


# ------------------------------------------------------------------------- backends study
def test_backends_layout_follows_the_sweep_order(tmp_path: Path) -> None:
    # `pipeline_backend=gpipe,naive,dist`: the columns follow the jobs, not a fixed list
    for job, (backend, acc, t, mem) in enumerate([("gpipe", 92.85, 1.03, 9.32e9),
                                                  ("naive", 93.24, 2.53, 13.27e9),
                                                  ("dist", 93.11, 2.09, 13.44e9)]):
        comm = _comm(overhead=320 if backend == "dist" else 0)  # dist's message headers
        _run_dir(tmp_path / f"{job}_pipeline_backend={backend}", [f"pipeline_backend={backend}"],
                 _summary(acc, comm=comm, backend=backend, time_per_batch_s=t, peak_memory_bytes=int(mem)))
    text = build_report(find_runs([tmp_path]))
    runs = _table(text, "## Runs")
    overhead = {row[1]: row[runs[0].index("overhead up / down")] for row in runs[1:]}
    assert overhead == {"gpipe": "0 B / 0 B", "dist": "320 B / 320 B", "naive": "0 B / 0 B"}
    assert _table(text, "## Pipeline backends") == [
        ["", "gpipe", "naive", "dist"],
        ["Val_acc1%", "92.85", "93.24", "93.11"],
        ["Time per batch (s)", "1.030", "2.530", "2.090"],
        ["Memory (peak)", "9.32 GB", "13.3 GB", "13.4 GB"],
    ]
    assert "## best_val_acc1" not in text  # one swept key: no pivot


def test_a_job_run_again_into_its_sweep_replaces_the_failed_one(tmp_path: Path) -> None:
    """The backends sweep whose naive job failed, that job run again into the same sweep dir (under
    another job number): the report keeps the newest run per override set, says so, and the
    backends table is back."""
    shared = ["experiment=backends", "data=digits"]
    failed = _run_dir(tmp_path / "0_pipeline_backend=naive", [*shared, "pipeline_backend=naive"], None)
    (failed / "train.log").write_text("[2024-01-01 12:00:00,000][edgesplit][ERROR] - error: bad chunks\n")
    for job, backend in ((1, "gpipe"), (2, "dist")):
        _run_dir(tmp_path / f"{job}_pipeline_backend={backend}", [*shared, f"pipeline_backend={backend}"],
                 _summary(90.0 + job, backend=backend))
    again = _run_dir(tmp_path / "3_pipeline_backend=naive",
                     [*shared, "pipeline_backend=naive", "resume=true"], _summary(93.0, backend="naive"))
    os.utime(failed / ".hydra" / "overrides.yaml", (1e9, 1e9))  # started long before the rerun
    runs = find_runs([tmp_path])
    assert [r.name for r in runs] == ["1", "2", "3"] and runs[-1].path == again
    text = build_report(runs)
    assert "the newest run per override set of a sweep is kept: 3 replaces 0_pipeline_backend=naive" in text
    assert _table(text, "## Pipeline backends")[0] == ["", "gpipe", "dist", "naive"]
    # the older of the two when the rerun is the one that failed: the finished one stays
    os.utime(again / ".hydra" / "overrides.yaml", (1, 1))
    assert [r.name for r in find_runs([tmp_path])] == ["0", "1", "2"]


# --------------------------------------------------------------- named choice x lr (quant_lr)
def test_named_choice_by_lr_pivot(tmp_path: Path) -> None:
    values = {("quantize8", "0.4"): 85.0, ("quantize8", "0.2"): 90.5, ("quantize8", "0.1"): 91.0,
              ("quantize4", "0.4"): 40.25, ("quantize4", "0.2"): 88.0}  # (quantize4, 0.1) missing
    for job, ((comp, lr), acc) in enumerate(values.items()):
        _run_dir(tmp_path / f"{job}_compressor={comp},schedule.lr={lr}",
                 ["experiment=quant_lr", f"compressor={comp}", f"schedule.lr={lr}"], _summary(acc))
    runs = find_runs([tmp_path])
    assert swept_keys(runs) == ["compressor", "schedule.lr"]
    assert _table(build_report(runs), "## best_val_acc1") == [
        ["compressor \\ schedule.lr", "0.1", "0.2", "0.4"],  # numbers sorted, names as they came
        ["quantize8", "91.00", "90.50", "85.00"],
        ["quantize4", "—", "88.00", "40.25"],
    ]


# ---------------------------------------------------------------------------------- curves
def test_curves_one_line_per_run_with_history(report_grid: Path) -> None:
    runs = find_runs([report_grid])
    fig = plot_curves(runs)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 8  # the summary-less run has no curve
    assert lines[0].get_label() == "partition.front=1, partition.back=1"
    assert _data(lines[0], "y") == pytest.approx([90.64, 92.14, 91.64])
    assert len(_data(lines[4], "x")) == 2  # the failed job stopped after two epochs
    text = write_report(runs, report_grid)
    png = (report_grid / "curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5000
    assert (report_grid / "report.md").read_text().startswith(text)


def test_single_run_dir_shows_all_overrides(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "outputs" / "2024-01-01" / "10-00-00",
                   ["data=digits", "model.width=0.25"], _summary(97.5))
    _run_dir(tmp_path / "outputs" / "2024-01-01" / "10-00-00" / "tb" / "nested", ["x=1"], None)
    runs = find_runs([tmp_path / "outputs"])
    assert len(runs) == 1 and runs[0].name == "2024-01-01/10-00-00" and runs[0].path == run
    table = _table(build_report(runs), "## Runs")
    assert table[0][1:3] == ["data", "model.width"]
    assert table[1][1:4] == ["digits", "0.25", "finished"]


def test_several_dirs_are_merged_and_the_first_gets_the_files(tmp_path: Path) -> None:
    a = _run_dir(tmp_path / "a", ["seed=1"], _summary(90.0))
    b = _run_dir(tmp_path / "b", ["seed=2"], _summary(91.0))
    assert main([str(a), str(b), str(a)]) == 0
    assert (a / "report.md").is_file() and (a / "curves.png").is_file()
    assert not (b / "report.md").exists()
    assert [r.overrides for r in find_runs([a, b])] == [{"seed": "1"}, {"seed": "2"}]


def test_human_bytes() -> None:
    assert [human_bytes(v) for v in (512, 1500, 2.0e5, 123_456_789, 13.27e9, None)] == \
        ["512 B", "1.5 kB", "200 kB", "123 MB", "13.3 GB", "—"]


def test_missing_dir_and_empty_dir_raise(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=f"{tmp_path / 'nope'} does not exist"):
        find_runs([tmp_path / "nope"])
    with pytest.raises(ReportError, match=f"no run dirs under {tmp_path}; expected"):
        find_runs([tmp_path])


# ------------------------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "edgesplit.report", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_writes_the_report(report_grid: Path) -> None:
    proc = _cli(str(report_grid))
    assert proc.returncode == 0, proc.stderr
    assert "| 2 | 92.22 | 50.00 (failed) | 91.72 |" in proc.stdout
    assert (report_grid / "report.md").read_text().startswith(proc.stdout)
    assert (report_grid / "curves.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = _cli(str(tmp_path / "missing"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"edgesplit.report: {tmp_path / 'missing'} does not exist or is not a directory; expected "
        "a Hydra multirun dir, an outputs dir or run dirs (a run dir holds .hydra/overrides.yaml)"]
    (tmp_path / "empty").mkdir()
    proc = _cli(str(tmp_path / "empty"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"no run dirs under {tmp_path / 'empty'}" in proc.stderr


def test_jobs_sort_by_number_within_each_sweep(tmp_path: Path) -> None:
    for sweep in ("10-00-00", "11-00-00"):
        for job in range(12):
            _run_dir(tmp_path / sweep / str(job), [f"seed={job}"], _summary(50.0 + job))
    runs = find_runs([tmp_path])
    assert [r.path.relative_to(tmp_path).as_posix() for r in runs[:3]] == \
        ["10-00-00/0", "10-00-00/1", "10-00-00/2"]
    assert [r.name for r in runs[10:13]] == ["10-00-00/10", "10-00-00/11", "11-00-00/0"]
    assert [r.name for r in find_runs([tmp_path / "11-00-00"])][-3:] == ["9", "10", "11"]


def test_job_that_failed_before_its_summary_is_listed_as_failed(tmp_path: Path) -> None:
    # train.py logs a bad config as one line and the job writes no summary.json
    for job, (front, summary) in enumerate([(1, _summary(91.0)), (30, None)]):
        run = _run_dir(tmp_path / f"{job}_partition.front={front}", [f"partition.front={front}",
                                                                     "partition.back=1"], summary)
        (run / "train.log").write_text(
            "[2024-01-01 12:00:00,000][edgesplit][ERROR] - error: partition.front+partition.back="
            f"{front + 1} is invalid: must be < 20\n" if summary is None else "")
    runs = find_runs([tmp_path])
    assert runs[1].status == "failed: partition.front+partition.back=31 is invalid: must be < 20"
    assert runs[0].status == "finished"
    text = build_report(runs)
    assert "| 1 | 30 | failed: partition.front+partition.back=31 is invalid" in text


def test_curves_png_is_the_figure_of_one_line_per_run(
        report_grid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[tuple[Figure, Path]] = []
    real_save = report.save_png

    def save_and_keep(fig: Figure, path: Path) -> None:
        saved.append((fig, path))
        real_save(fig, path)

    monkeypatch.setattr(report, "save_png", save_and_keep)
    runs = find_runs([report_grid])
    write_report(runs, report_grid)
    assert [path.name for _, path in saved] == ["curves.png", "loss.png"]  # no compression: no pareto
    fig, path = saved[0]
    assert path == report_grid / "curves.png" and path.read_bytes().startswith(PNG_SIGNATURE)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    keys = swept_keys(runs)
    assert labels == [run_label(r, keys) for r in runs if r.history]
    assert len(labels) == 8  # (3,3) has no summary, so no curve
    assert labels[0] == "partition.front=1, partition.back=1"


def test_a_summary_that_does_not_fit_is_named_unreadable(tmp_path: Path) -> None:
    data = _summary(90.0).to_dict()
    del data["backend"]
    (_run_dir(tmp_path / "0_seed=1", ["seed=1"], None) / "summary.json").write_text(json.dumps(data))
    _run_dir(tmp_path / "1_seed=2", ["seed=2"], _summary(91.0, status="paused"))
    (_run_dir(tmp_path / "2_seed=3", ["seed=3"], None) / "summary.json").write_text("[]")
    assert [r.status for r in find_runs([tmp_path])] == [
        "unreadable summary.json (no 'backend')",
        "unreadable summary.json (status 'paused' is not one of running, finished, failed, interrupted)",
        "unreadable summary.json (not an object)"]
