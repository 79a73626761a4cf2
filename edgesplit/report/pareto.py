"""Compression sweeps: methods ranked by accuracy, and accuracy against bytes per batch (pareto.png)."""
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from edgesplit.report.curves import label as _label
from edgesplit.report.labels import Label, place_labels
from edgesplit.report.runs import Group, Run, value_order
from edgesplit.report.tables import DASH, Stat, group_cell, human_bytes, markdown_table, stat, states

COMPRESSOR = "compressor"
UNCOMPRESSED = "none"


def compression_keys(keys: Sequence[str]) -> list[str]:
    """The swept keys that choose the compression: `compressor` and `compressor.*`."""
    return [k for k in keys if k == COMPRESSOR or k.startswith(COMPRESSOR + ".")]


def best_acc(run: Run) -> Any:
    return run.summary.best_val_acc1 if run.summary else None


def payload_bytes(run: Run) -> Any:
    """Payload bytes per batch, up and down together, averaged over the run's epochs: warm-up
    epochs and first visits count (transport overhead does not). Summaries without per-epoch
    bytes give their last epoch's."""
    s = run.summary
    if s is None or s.comm is None:
        return None
    epochs = [h.up_bytes_per_batch + h.down_bytes_per_batch for h in s.history
              if h.up_bytes_per_batch is not None and h.down_bytes_per_batch is not None]
    if epochs and len(epochs) == len(s.history):
        return sum(epochs) / len(epochs)  # every epoch has the same batches
    return s.comm.up_bytes_per_batch + s.comm.down_bytes_per_batch


def raw_ratio(run: Run) -> Any:
    """fp32 bytes over payload_bytes: the run's compression against raw fp32 values (whatever
    the run's precision)."""
    sent = payload_bytes(run)
    comm = run.summary.comm if run.summary else None
    if comm is None or not sent:
        return None
    return comm.raw_fp32_bytes_per_batch / sent  # fp32-equivalent: comparable across precisions


@dataclass
class Point:
    """One method in one series (the other swept keys, e.g. `schedule.lr=0.1`), over its seeds."""
    setting: tuple[str, ...]  # the values of the other swept keys (e.g. schedule.lr), in order
    series: str  # their legend label, `schedule.lr=0.1`; "" when only the compression is swept
    method: str  # `quantize4`, `quantize bits=4`, `prune ratio=0.05`
    uncompressed: bool
    runs: list[Run]
    acc: Optional[Stat]
    bytes: Optional[Stat]


def method_label(overrides: dict[str, str], ckeys: Sequence[str]) -> str:
    """The compressor choice and its swept settings (`bits=4`); settings a run lacks are left out."""
    parts = [_label(overrides.get(k)) if k == COMPRESSOR else f"{k[len(COMPRESSOR) + 1:]}={overrides[k]}"
             for k in ckeys if k == COMPRESSOR or k in overrides]
    return " ".join(parts) or "(default)"


def points(groups: Sequence[Group], keys: Sequence[str]) -> list[Point]:
    """One point per seed group; `keys` are the swept keys without seed."""
    ckeys = compression_keys(keys)
    skeys = [k for k in keys if k not in ckeys]
    orders = [value_order([g.overrides.get(k) for g in groups]) for k in skeys]
    groups = sorted(groups, key=lambda g: [o.index(g.overrides.get(k)) for k, o in zip(skeys, orders)])
    return [Point(tuple(_label(g.overrides.get(k)) for k in skeys),
                  ", ".join(f"{k}={_label(g.overrides.get(k))}" for k in skeys),
                  method_label(g.overrides, ckeys), g.overrides.get(COMPRESSOR) == UNCOMPRESSED, g.runs,
                  stat([best_acc(r) for r in g.runs]), stat([payload_bytes(r) for r in g.runs]))
            for g in groups]


def frontier(pts: Sequence[Point]) -> list[Point]:
    """The points no other point beats with fewer or as many bytes and more accuracy, by bytes."""
    known = sorted((p for p in pts if p.acc and p.bytes), key=lambda p: (_x(p), -_y(p)))
    out: list[Point] = []
    for p in known:
        if not out or _y(p) > _y(out[-1]):
            out.append(p)
    return out


def _x(p: Point) -> float:
    return p.bytes.mean if p.bytes else float("nan")


def _y(p: Point) -> float:
    return p.acc.mean if p.acc else float("nan")


def _err(p: Point) -> float:
    return p.acc.std or 0.0 if p.acc else 0.0


STAR_PT, DOT_PT, RING_PT = 15.0, 6.0, 13.0  # marker sizes: the uncompressed run, a method, a frontier ring


def plot_pareto(pts: Sequence[Point]) -> Figure:
    """Best val acc1 (mean, error bars ± std where a method has several seeds) against payload bytes
    per batch on a log axis: one labelled point per method, one colour per series, the uncompressed
    point a star, and each series' Pareto frontier dashed; no label overlaps another or a marker."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    labels: list[Label] = []
    for i, series in enumerate(dict.fromkeys(p.series for p in pts)):
        color, known = f"C{i % 10}", [p for p in pts if p.series == series and p.acc and _x(p) > 0]
        suffix = f" ({series})" if series else ""
        for none in (False, True):
            sel = [p for p in known if p.uncompressed == none]
            if sel:
                ax.errorbar([_x(p) for p in sel], [_y(p) for p in sel], yerr=[_err(p) for p in sel],
                            fmt="*" if none else "o", markersize=STAR_PT if none else DOT_PT, color=color,
                            markeredgecolor="black" if none else color, capsize=3,
                            label=(f"{UNCOMPRESSED} (uncompressed)" if none else "methods") + suffix)
            if none and sel:
                ax.axhline(_y(sel[0]), color=color, linestyle=":", linewidth=1)
        front = frontier(known)  # dashed through rings (one point: the ring alone)
        if front:
            ax.plot([_x(p) for p in front], [_y(p) for p in front], "--", color=color, alpha=0.7,
                    marker="o", markersize=RING_PT, markerfacecolor="none", label="Pareto frontier" + suffix)
        labels += [Label(p.method, (_x(p), _y(p)), color,
                         STAR_PT if p.uncompressed else RING_PT if p in front else DOT_PT) for p in known]
    _bytes_axis(ax, [_x(p) for p in pts if p.acc and _x(p) > 0])
    ax.set_xlabel("payload bytes per batch, up + down (log scale)")
    seeds = any(p.acc.n > 1 for p in pts if p.acc)  # error bars only where there is a spread to show
    ax.set_ylabel("best val acc1 (%)" + (", mean ± std over seeds" if seeds else ""))
    ax.set_title("accuracy vs bytes")
    ax.grid(True, which="both", alpha=0.3)
    if ax.containers:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no run with an accuracy and bytes yet", ha="center", va="center",
                transform=ax.transAxes)
    place_labels(ax, labels)
    return fig


def _bytes_axis(ax: Axes, xs: Sequence[float]) -> None:
    """A log x axis labelled in bytes (`1 MB`); with under 2.5 decades of data, 2x and 5x ticks too."""
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_bytes(x)))
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    narrow = len(xs) > 0 and math.log10(max(xs) / min(xs)) < 2.5
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: human_bytes(x)) if narrow else NullFormatter())


def _times(value: Optional[float]) -> str:
    return DASH if value is None else f"{value:.2f}x"


def ranking_table(pts: Sequence[Point], series_keys: Sequence[str]) -> str:
    """Per series, the methods by mean best val acc1 (highest first; none without a figure last),
    with bytes per batch, the compression against the series' uncompressed run and against fp32."""
    rows = []
    for series in dict.fromkeys(p.series for p in pts):
        mine = [p for p in pts if p.series == series]
        none = next((p.bytes.mean for p in mine if p.uncompressed and p.bytes), None)
        ranked = sorted(mine, key=lambda p: (p.acc is None, -_y(p) if p.acc else 0.0))
        for rank, p in enumerate(ranked, 1):
            vs_none = none / p.bytes.mean if none and p.bytes and p.bytes.mean else None
            rows.append([*p.setting, rank if p.acc else DASH, p.method,
                         states(p.runs), group_cell(p.runs, best_acc, notes=False),
                         group_cell(p.runs, payload_bytes, human_bytes, notes=False), _times(vs_none),
                         group_cell(p.runs, raw_ratio, _times, notes=False)])
    return markdown_table([*series_keys, "rank", "method", "runs",
                           "best val acc1 (%)", "bytes/batch (up+down)", "vs none", "vs fp32"], rows)
