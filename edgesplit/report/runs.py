"""The runs of a report: run dirs found and read, swept keys, and groups of runs that differ only in seed."""
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

from edgesplit.report.curves import label as _label, number as _num
from edgesplit.errors import UserError
from edgesplit.logs.summary import EpochRecord, RunSummary, SummaryFormatError, read_summary

SEED_KEY = "seed"
IGNORED_KEYS = ("resume",)  # overrides that do not change what a run computes
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
    replaced: list[str] = field(default_factory=list)  # older job dirs of its sweep with its overrides

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
    def state(self) -> str:
        """The status in one word: finished, running, interrupted, failed or `no summary`."""
        if self.summary is not None:
            return self.summary.status
        return "failed" if (self.problem or "").startswith("failed") else "no summary"

    @property
    def history(self) -> list[EpochRecord]:
        return self.summary.history if self.summary else []


@dataclass
class Group:
    """Runs whose overrides differ only in `seed` (a run without a seed override has the default)."""
    overrides: dict[str, str]  # the overrides they share, seed and ignored keys left out
    runs: list[Run]

    def label(self, keys: Sequence[str]) -> str:
        """`key=value, ...` for `keys`; `all runs` when no key is given."""
        return ", ".join(f"{k}={_label(self.overrides.get(k))}" for k in keys) or "all runs"


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """The seed groups of `runs`, in order of each group's first run."""
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for run in runs:
        shared = {k: v for k, v in run.overrides.items() if k != SEED_KEY and k not in IGNORED_KEYS}
        key = tuple(sorted(shared.items()))
        groups.setdefault(key, Group(shared, [])).runs.append(run)
    return list(groups.values())


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
    return newest_per_override_set(runs)


def _started(run: Run) -> float:
    """When the run last started: Hydra writes .hydra/overrides.yaml at every start."""
    try:
        return (run.path / ".hydra" / "overrides.yaml").stat().st_mtime
    except OSError:
        return -math.inf


def newest_per_override_set(runs: Sequence[Run]) -> list[Run]:
    """Jobs of one sweep dir with the same overrides (a failed job run again into the sweep, as
    another job number): the newest started is kept, its `replaced` names the others."""
    newest: dict[tuple, Run] = {}
    for run in runs:
        if not _JOB.match(run.path.name):
            continue  # not a sweep's job: single runs are kept whatever their overrides
        overrides = tuple(sorted((k, v) for k, v in run.overrides.items() if k not in IGNORED_KEYS))
        key = (run.path.parent, overrides)
        kept = newest.setdefault(key, run)
        if kept is not run:
            new, old = (run, kept) if _started(run) >= _started(kept) else (kept, run)
            new.replaced += [old.path.name, *old.replaced]
            newest[key] = new
    kept_ids = {id(r) for r in newest.values()}
    return [r for r in runs if not _JOB.match(r.path.name) or id(r) in kept_ids]


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose values differ across runs, in order of appearance; one run: all."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and k not in IGNORED_KEYS]
    return keys if len(runs) <= 1 else [
        k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


def scalar(value: Optional[str]) -> Optional[float]:
    """The number an override value spells (`0.1`, `2`, `1e-3`), else None."""
    try:
        return None if value is None else _num(yaml.safe_load(value))
    except yaml.YAMLError:
        return None


def value_order(values: Sequence[Optional[str]]) -> list[Optional[str]]:
    """Distinct values: numerically sorted when all are numbers, else first-seen order."""
    distinct = list(dict.fromkeys(values))
    numbers = [scalar(v) for v in distinct]
    if None in numbers:
        return distinct
    return [v for _, v in sorted(zip(numbers, distinct), key=lambda t: t[0] or 0.0)]
