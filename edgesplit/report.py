"""`python -m edgesplit.report DIR...`: seed-style markdown tables and validation curves of runs."""
import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from edgesplit.errors import UserError

BACKEND_ORDER = ("naive", "gpipe", "dist")
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
    summary: Optional[dict[str, Any]] = None
    problem: Optional[str] = None  # why summary.json could not be read

    def get(self, key: str) -> Any:
        """A summary value by dotted key (e.g. `comm.up_bytes_per_batch`); None when absent."""
        value: Any = self.summary
        for part in key.split("."):
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    @property
    def status(self) -> str:
        if self.summary is None:
            return self.problem or "no summary"
        status = self.summary.get("status")
        if status == "running":
            done, planned = self.get("epochs"), self.get("epochs_planned")
            return f"running {0 if done is None else done}/{'?' if planned is None else planned}"
        if status == "failed":
            error = self.summary.get("error")
            return f"failed: {error}" if error else "failed"
        return str(status) if status else "unknown status"

    @property
    def history(self) -> list[dict[str, Any]]:
        hist = self.get("history")
        return [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []


# ----------------------------------------------------------------------------------- reading
def _parse_overrides(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        items = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        text = str(item)
        if text.startswith("~") or "=" not in text:
            continue  # a deletion (~key) changes no value we could tabulate
        key, value = text.split("=", 1)
        out[key.lstrip("+")] = value
    return out


def _read_summary(path: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable summary.json ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, "unreadable summary.json (not an object)"
    return data, None


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
            if run_dir in seen:
                continue
            seen.add(run_dir)
            name = _run_name(run_dir, root)
            if len(paths) > 1:
                name = f"{i}:{name}"
            summary, problem = _read_summary(run_dir / "summary.json")
            runs.append(Run(run_dir, name, _parse_overrides(run_dir / ".hydra" / "overrides.yaml"),
                            summary, problem))
    return runs


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose values differ across runs, in order of appearance; one run: all."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys and k not in IGNORED_KEYS]
    if len(runs) <= 1:
        return keys
    return [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]


# -------------------------------------------------------------------------------- formatting
def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _fmt(value: Any, digits: int = 2) -> str:
    v = _num(value)
    return DASH if v is None else f"{v:.{digits}f}"


def human_bytes(value: Any) -> str:
    """Decimal units: 1234567 -> '1.23 MB'; None -> '—'."""
    v = _num(value)
    if v is None:
        return DASH
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(v) < 1000 or unit == "TB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.3g} {unit}"
        v /= 1000
    return DASH  # pragma: no cover


def _cell(text: Any) -> str:
    return " ".join(str(text).replace("|", "\\|").split())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _value_order(runs: Sequence[Run], key: str) -> list[Optional[str]]:
    """Distinct values of `key`: numerically sorted when all are numbers, else first-seen order."""
    values: list[Optional[str]] = []
    for run in runs:
        if run.overrides.get(key) not in values:
            values.append(run.overrides.get(key))
    parsed = [_scalar(v) for v in values]
    numbers = [p for p in parsed if p is not None]
    if len(numbers) == len(values):
        return [v for _, v in sorted(zip(numbers, values), key=lambda t: t[0])]
    return values


def _scalar(value: Optional[str]) -> Optional[float]:
    """The number an override value spells (`0.1`, `2`, `1e-3`), else None."""
    if value is None:
        return None
    try:
        return _num(yaml.safe_load(value))
    except yaml.YAMLError:
        return None


def _label(value: Optional[str]) -> str:
    return "(default)" if value is None else value


def run_label(run: Run, keys: Sequence[str]) -> str:
    parts = [f"{k}={_label(run.overrides.get(k))}" for k in keys]
    return ", ".join(parts) if parts else run.name


# ------------------------------------------------------------------------------------ tables
def runs_table(runs: Sequence[Run], keys: Sequence[str]) -> str:
    header = ["run", *keys, "status", "epochs", "best val acc1", "final val acc1", "time/batch (s)",
              "samples/s", "peak memory", "up/batch", "down/batch", "compression"]
    rows = []
    for r in runs:
        ratio = _num(r.get("comm.compression_ratio"))
        rows.append([r.name, *(_label(r.overrides.get(k)) for k in keys), r.status,
                     DASH if r.get("epochs") is None else r.get("epochs"),
                     _fmt(r.get("best_val_acc1")), _fmt(r.get("val_acc1")),
                     _fmt(r.get("time_per_batch_s"), 3), _fmt(r.get("samples_per_s"), 0),
                     human_bytes(r.get("peak_memory_bytes")),
                     human_bytes(r.get("comm.up_bytes_per_batch")),
                     human_bytes(r.get("comm.down_bytes_per_batch")),
                     DASH if ratio is None else f"{ratio:.2f}x"])
    return markdown_table(header, rows)


def _pivot_value(run: Run) -> str:
    best = _fmt(run.get("best_val_acc1"))
    status = (run.summary or {}).get("status")
    if status == "failed":
        return "failed" if best == DASH else f"{best} (failed)"
    if status == "running":
        return f"{best} (running)"
    return best


def pivot_table(runs: Sequence[Run], row_key: str, col_key: str) -> str:
    """best_val_acc1 with rows = values of `row_key`, columns = values of `col_key`."""
    rows_v, cols_v = _value_order(runs, row_key), _value_order(runs, col_key)
    body = []
    for rv in rows_v:
        line: list[str] = [_label(rv)]
        for cv in cols_v:
            cell = [_pivot_value(r) for r in runs
                    if r.overrides.get(row_key) == rv and r.overrides.get(col_key) == cv]
            line.append(" / ".join(cell) if cell else DASH)
        body.append(line)
    return markdown_table([f"{row_key} \\ {col_key}", *(_label(c) for c in cols_v)], body)


def backends_table(runs: Sequence[Run], key: str) -> str:
    """The seed's layout: columns = backends, rows = accuracy, time per batch, peak memory."""
    present = _value_order(runs, key)
    cols: list[Optional[str]] = [b for b in BACKEND_ORDER if b in present]
    cols += [b for b in present if b not in BACKEND_ORDER]

    def row(title: str, fmt: Any) -> list[str]:
        return [title, *(" / ".join(fmt(r) for r in runs if r.overrides.get(key) == b) or DASH
                         for b in cols)]

    return markdown_table(["", *(_label(b) for b in cols)], [
        row("Val_acc1%", _pivot_value),
        row("Time per batch (s)", lambda r: _fmt(r.get("time_per_batch_s"), 3)),
        row("Memory (peak)", lambda r: human_bytes(r.get("peak_memory_bytes"))),
    ])


def build_report(runs: Sequence[Run]) -> str:
    """The markdown report: the runs table, then a pivot or the backends layout where they apply."""
    keys = swept_keys(runs)
    parts = [f"# edgesplit report: {len(runs)} run(s)", "", "## Runs", "",
             runs_table(runs, keys)]
    if len(runs) > 1 and len(keys) == 2:
        parts += ["", f"## best_val_acc1 (%): rows {keys[0]}, columns {keys[1]}", "",
                  pivot_table(runs, keys[0], keys[1])]
    if len(runs) > 1 and len(keys) == 1 and keys[0] in BACKEND_KEYS:
        parts += ["", "## Pipeline backends", "", backends_table(runs, keys[0])]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------ curves
def plot_curves(runs: Sequence[Run]) -> Figure:
    """Validation acc1 per epoch: one line per run with history, labelled by its swept overrides."""
    keys = swept_keys(runs)
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for run in runs:
        points = [(h["epoch"], h["val_acc1"]) for h in run.history
                  if _num(h.get("epoch")) is not None and _num(h.get("val_acc1")) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(points) < 30 else None, label=run_label(run, keys))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val acc1 (%)")
    ax.set_title("validation accuracy")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center",
                transform=ax.transAxes)
    return fig


def write_report(runs: Sequence[Run], out_dir: Path) -> str:
    """Write report.md and curves.png into out_dir; return the markdown."""
    text = build_report(runs)
    (out_dir / "report.md").write_text(text + "\n![validation accuracy](curves.png)\n")
    plot_curves(runs).savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
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
        runs = find_runs(args.dirs)
        text = write_report(runs, out_dir)
    except ReportError as exc:
        print(f"edgesplit.report: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edgesplit.report: cannot write report.md/curves.png into {out_dir}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    print(f"\nwrote {out_dir / 'report.md'} and {out_dir / 'curves.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
