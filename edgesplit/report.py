"""`python -m edgesplit.report DIR...`: seed-style markdown tables and validation curves of runs."""
import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml
from matplotlib.figure import Figure

from edgesplit.curves import label as _label, number as _num, plot_validation, run_label, save_png
from edgesplit.errors import UserError
from edgesplit.run_summary import EpochRecord, RunSummary, SummaryFormatError, read_summary

BACKEND_KEYS = ("pipeline_backend", "pipeline_backend.name")
IGNORED_KEYS = ("resume",)  # overrides that do not change what a run computes
DASH = "—"
_EXPECTED = ("expected a Hydra multirun dir, an outputs dir or run dirs "
             "(a run dir holds .hydra/overrides.yaml)")


class ReportError(UserError):
    """A report input that does not exist or holds no run dirs."""


@dataclass
class Run:
    """One run dir: its overrides (in order) and its summary.json, if any."""
    path: Path
    name: str
    overrides: dict[str, str] = field(default_factory=dict)
    summary: Optional[RunSummary] = None
    problem: Optional[str] = None  # why there is no summary: unreadable, or the job failed first

    @property
    def status(self) -> str:
        s = self.summary
        if s is None:
            return self.problem or "no summary"
        if s.status in ("running", "interrupted"):
            return f"{s.status} {s.epochs}/{s.epochs_planned}"
        if s.status == "failed":
            return f"failed: {s.error}" if s.error else "failed"
        return s.status

    @property
    def history(self) -> list[EpochRecord]:
        return self.summary.history if self.summary else []


def _parse_overrides(path: Path) -> dict[str, str]:
    try:
        items = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    except (OSError, yaml.YAMLError):
        return {}
    # a deletion (~key) changes no value we could tabulate
    pairs = [str(i).split("=", 1) for i in (items if isinstance(items, list) else [])
             if not str(i).startswith("~") and "=" in str(i)]
    return {key.lstrip("+"): value for key, value in pairs}


_LOGGED_ERROR = re.compile(r"\]\[ERROR\] - error: (.*)$")  # train.py's one-line job error


def _logged_error(run_dir: Path) -> Optional[str]:
    """`failed: ...` for a job that failed before writing summary.json (e.g. a bad config)."""
    for log in sorted(run_dir.glob("*.log")):
        try:
            errors = [m.group(1) for m in map(_LOGGED_ERROR.search, log.read_text(
                errors="replace").splitlines()) if m]
        except OSError:
            continue
        if errors:
            return f"failed: {errors[-1]}"
    return None


def _read_summary(run_dir: Path) -> tuple[Optional[RunSummary], Optional[str]]:
    try:
        summary = read_summary(run_dir)
    except SummaryFormatError as exc:
        return None, f"unreadable summary.json ({exc})"
    except (OSError, ValueError) as exc:  # e.g. caught mid-write by a copy that is not atomic
        return None, f"unreadable summary.json ({type(exc).__name__})"
    return (summary, None) if summary is not None else (None, _logged_error(run_dir))


_JOB = re.compile(r"(\d+)(_|$)")  # Hydra's job subdir: `N` or `N_key=value,...`


def _job_number(path: Path) -> float:
    m = _JOB.match(path.name)
    return int(m.group(1)) if m else math.inf


def _run_name(run_dir: Path, root: Path) -> str:
    """The job number for a job of the given sweep dir, else the path below the given dir."""
    m = _JOB.match(run_dir.name)
    if m and run_dir.parent == root:
        return m.group(1)
    return run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name


def find_runs(paths: Sequence[os.PathLike[str] | str]) -> list[Run]:
    """Every run dir (a dir holding `.hydra/`) under `paths`, in path order then job number."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for i, given in enumerate(paths):
        root = Path(given).expanduser().resolve()
        if not root.is_dir():
            raise ReportError(f"{root} does not exist or is not a directory; {_EXPECTED}")
        found: list[Path] = []
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if (here / ".hydra").is_dir():
                found.append(here)
                dirnames[:] = []  # a run dir's own subdirs (tb/, ...) hold no runs
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if not found:
            raise ReportError(f"no run dirs under {root}; {_EXPECTED}")
        # each sweep's jobs by number (10 after 9), sweeps and outputs dirs by path
        for run_dir in sorted(found, key=lambda p: (str(p.parent), _job_number(p), str(p))):
            if run_dir not in seen:
                seen.add(run_dir)
                name = _run_name(run_dir, root)
                runs.append(Run(run_dir, f"{i}:{name}" if len(paths) > 1 else name,
                                _parse_overrides(run_dir / ".hydra" / "overrides.yaml"),
                                *_read_summary(run_dir)))
    return runs


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose values differ across runs, in order of appearance; one run: all."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and k not in IGNORED_KEYS]
    return keys if len(runs) <= 1 else [
        k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def _fmt(value: Any, digits: int = 2) -> str:
    return DASH if _num(value) is None else f"{value:.{digits}f}"


def human_bytes(value: Any) -> str:
    """Decimal units: 1234567 -> '1.23 MB'; None -> '—'."""
    v, units = _num(value), ["B", "kB", "MB", "GB", "TB"]
    while v is not None and abs(v) >= 1000 and len(units) > 1:
        v, units = v / 1000, units[1:]
    return DASH if v is None else f"{v:.0f} B" if units[0] == "B" else f"{v:.3g} {units[0]}"


def _cell(text: Any) -> str:
    return " ".join(str(text).replace("|", "\\|").split())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _value_order(runs: Sequence[Run], key: str) -> list[Optional[str]]:
    """Distinct values of `key`: numerically sorted when all are numbers, else first-seen order."""
    values = list(dict.fromkeys(run.overrides.get(key) for run in runs))
    numbers = [_scalar(v) for v in values]
    if None in numbers:
        return values
    return [v for _, v in sorted(zip(numbers, values), key=lambda t: t[0] or 0.0)]


def _scalar(value: Optional[str]) -> Optional[float]:
    """The number an override value spells (`0.1`, `2`, `1e-3`), else None."""
    try:
        return None if value is None else _num(yaml.safe_load(value))
    except yaml.YAMLError:
        return None


def _summary_cells(s: RunSummary, overhead: bool) -> list[Any]:
    """A run's cells of the runs table from `epochs` on; dashes for what it has not reported yet."""
    comm = s.comm
    cells = [s.epochs, _fmt(s.best_val_acc1), _fmt(s.val_acc1), _fmt(s.time_per_batch_s, 3),
             _fmt(s.samples_per_s, 0), human_bytes(s.peak_memory_bytes),
             human_bytes(comm.up_bytes_per_batch if comm else None),
             human_bytes(comm.down_bytes_per_batch if comm else None)]
    if overhead:
        cells.append(DASH if comm is None else f"{human_bytes(comm.overhead_up_bytes_per_batch)} / "
                                               f"{human_bytes(comm.overhead_down_bytes_per_batch)}")
    return cells + [DASH if comm is None else f"{comm.compression_ratio:.2f}x"]


def _has_overhead(run: Run) -> bool:
    comm = run.summary.comm if run.summary else None
    return comm is not None and comm.overhead_up_bytes_per_batch + comm.overhead_down_bytes_per_batch > 0


def runs_table(runs: Sequence[Run], keys: Sequence[str]) -> str:
    """One row per run; an `overhead up / down` column (transport bytes per batch) where a run has any."""
    overhead = any(_has_overhead(r) for r in runs)
    header = ["run", *keys, "status", "epochs", "best val acc1", "final val acc1", "time/batch (s)",
              "samples/s", "peak memory", "up/batch", "down/batch",
              *(["overhead up / down"] if overhead else []), "compression"]
    no_summary = [DASH] * (len(header) - len(keys) - 2)
    rows = [[r.name, *(_label(r.overrides.get(k)) for k in keys), r.status,
             *(_summary_cells(r.summary, overhead) if r.summary else no_summary)] for r in runs]
    return markdown_table(header, rows)


def _pivot_value(run: Run) -> str:
    if run.summary is None:  # no summary.json: failed before the first epoch, or not started
        return "failed" if (run.problem or "").startswith("failed") else DASH
    best, status = _fmt(run.summary.best_val_acc1), run.summary.status
    if status == "failed":
        return "failed" if best == DASH else f"{best} (failed)"
    return f"{best} ({status})" if status in ("running", "interrupted") else best


def pivot_table(runs: Sequence[Run], row_key: str, col_key: str) -> str:
    """best_val_acc1 with rows = values of `row_key`, columns = values of `col_key`."""
    rows_v, cols_v = _value_order(runs, row_key), _value_order(runs, col_key)

    def cell(rv: Optional[str], cv: Optional[str]) -> str:  # several runs (repeats): a / b
        return " / ".join(_pivot_value(r) for r in runs if r.overrides.get(row_key) == rv
                          and r.overrides.get(col_key) == cv) or DASH

    body = [[_label(rv), *(cell(rv, cv) for cv in cols_v)] for rv in rows_v]
    return markdown_table([f"{row_key} \\ {col_key}", *(_label(c) for c in cols_v)], body)


def backends_table(runs: Sequence[Run], key: str) -> str:
    """The seed's layout: columns = backends in the sweep's order, rows = accuracy, time per
    batch, peak memory."""
    cols = _value_order(runs, key)

    def row(title: str, fmt: Callable[[Run], str]) -> list[str]:
        return [title, *(" / ".join(fmt(r) for r in runs if r.overrides.get(key) == b) or DASH
                         for b in cols)]

    return markdown_table(["", *(_label(b) for b in cols)], [
        row("Val_acc1%", _pivot_value),
        row("Time per batch (s)", lambda r: _fmt(r.summary.time_per_batch_s if r.summary else None, 3)),
        row("Memory (peak)", lambda r: human_bytes(r.summary.peak_memory_bytes if r.summary else None)),
    ])


def build_report(runs: Sequence[Run]) -> str:
    """The markdown report: the runs table, then a pivot or the backends layout where they apply."""
    keys = swept_keys(runs)
    parts = [f"# edgesplit report: {len(runs)} run(s)", "", "## Runs", "", runs_table(runs, keys)]
    if len(runs) > 1 and len(keys) == 2:
        parts += ["", f"## best_val_acc1 (%): rows {keys[0]}, columns {keys[1]}", "",
                  pivot_table(runs, keys[0], keys[1])]
    if len(runs) > 1 and len(keys) == 1 and keys[0] in BACKEND_KEYS:
        parts += ["", "## Pipeline backends", "", backends_table(runs, keys[0])]
    return "\n".join(parts) + "\n"


def plot_curves(runs: Sequence[Run]) -> Figure:
    """Validation acc1 per epoch: one line per run with history, labelled by its swept overrides."""
    keys = swept_keys(runs)
    return plot_validation([(run_label(run, keys), run.history) for run in runs])


def write_report(runs: Sequence[Run], out_dir: Path) -> str:
    """Write report.md and curves.png into out_dir; return the markdown."""
    text = build_report(runs)
    (out_dir / "report.md").write_text(text + "\n![validation accuracy](curves.png)\n")
    save_png(plot_curves(runs), out_dir / "curves.png")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgesplit.report",
        description="Tables (markdown) and validation curves of edgesplit runs; writes report.md "
                    "and curves.png into the first DIR.")
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a Hydra multirun dir, an outputs dir, or run dirs")
    args = parser.parse_args(argv)
    out_dir = Path(args.dirs[0]).expanduser().resolve()
    try:
        text = write_report(find_runs(args.dirs), out_dir)
    except (ReportError, OSError) as exc:
        why = exc if isinstance(exc, ReportError) else (
            f"cannot write report.md/curves.png into {out_dir}: {exc.strerror or exc}")
        print(f"edgesplit.report: {why}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    print(f"\nwrote {out_dir / 'report.md'} and {out_dir / 'curves.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
