"""Markdown cells and tables of a report: numbers, bytes, and mean ± std (n) over a group's runs."""
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from edgesplit.report.curves import number as _num
from edgesplit.report.runs import Run

DASH = "—"
Getter = Callable[[Run], Any]  # a run's figure (a number or None) from its summary


def fmt(value: Any, digits: int = 2) -> str:
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


@dataclass
class Stat:
    """A figure over a group's runs: mean, sample standard deviation (n - 1; None for n = 1), n."""
    mean: float
    std: Optional[float]
    n: int


def stat(values: Sequence[Any]) -> Optional[Stat]:
    """Mean, std and n of the numbers among `values` (None, NaN and non-numbers left out)."""
    xs = [v for v in map(_num, values) if v is not None and math.isfinite(v)]
    if not xs:
        return None
    return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


def figures(runs: Sequence[Run], figure: Getter) -> list[Any]:
    """`figure` of each run that has a summary."""
    return [figure(r) for r in runs if r.summary is not None]


def states(runs: Sequence[Run]) -> str:
    """`3 finished`, `2 finished, 1 failed`: how many runs are in each state, finished first."""
    counts = Counter(r.state for r in runs)
    order = sorted(counts, key=lambda s: (s != "finished", s))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def _unfinished(runs: Sequence[Run]) -> str:
    counts = Counter(r.state for r in runs if r.state != "finished")
    return ", ".join(f"{counts[s]} {s}" for s in sorted(counts))


def stat_cell(runs: Sequence[Run], figure: Getter, show: Callable[[Any], str] = fmt,
              notes: bool = True) -> str:
    """One cell over a seed group: `97.40 ± 0.60 (n=3)`; n counts the runs that have the figure
    (`± —` when that is one); `notes` adds how many runs are not finished: `(n=3; 1 failed)`."""
    s = stat(figures(runs, figure))
    note = _unfinished(runs) if notes else ""
    n = f"(n={s.n if s else 0}{'; ' + note if note else ''})"
    if s is None:
        return f"{DASH} {n}"
    return f"{show(s.mean)} ± {DASH if s.std is None else show(s.std)} {n}"


def run_cell(run: Run, figure: Getter, show: Callable[[Any], str] = fmt) -> str:
    """One run's figure as before seeds were grouped: the value, with the status when not finished."""
    if run.summary is None:  # no summary.json: failed before the first epoch, or not started
        return "failed" if run.state == "failed" else DASH
    value, status = show(figure(run)), run.summary.status
    if status == "failed":
        return "failed" if value == DASH else f"{value} (failed)"
    return f"{value} ({status})" if status in ("running", "interrupted") else value


def group_cell(runs: Sequence[Run], figure: Getter, show: Callable[[Any], str] = fmt,
               notes: bool = True) -> str:
    """A table cell for the runs that differ only in seed: one run as `run_cell` (without `notes`:
    the value alone), several as `stat_cell`; no run: a dash."""
    if len(runs) > 1:
        return stat_cell(runs, figure, show, notes)
    if not runs or runs[0].summary is None and not notes:
        return DASH
    return run_cell(runs[0], figure, show) if notes else show(figure(runs[0]))
