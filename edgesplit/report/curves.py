"""The curves of a report: val accuracy and train loss per epoch, a line (or mean and band) per group."""
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from edgesplit.logs.summary import EpochRecord

# (label, the histories of the group's runs): one history is a line, several a mean and a band
Series = tuple[str, Sequence[Sequence[EpochRecord]]]


def number(value: Any) -> Optional[float]:
    """`value` as a float when it is an int or float (not bool, not NaN), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return float(value) if ok else None


def label(value: Optional[str]) -> str:
    """An override value as shown in tables and legends (a run without it: `(default)`)."""
    return "(default)" if value is None else value


def run_label(run: Any, keys: Sequence[str]) -> str:
    """`key=value, ...` of a run's `overrides` for `keys`; its `name` when no key is given."""
    parts = [f"{k}={label(run.overrides.get(k))}" for k in keys]
    return ", ".join(parts) if parts else str(run.name)


def mean_band(histories: Sequence[Sequence[EpochRecord]], metric: str
              ) -> tuple[list[int], list[float], list[float]]:
    """Per epoch that some run reached with a finite `metric`: the epoch, the mean over those runs,
    and their sample standard deviation (NaN where only one run has the epoch)."""
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for h in history:
            value = number(getattr(h, metric))
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(h.epoch, []).append(value)
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else math.nan for e in epochs]
    return epochs, means, stds


# where two series draw the same line, the later one gets hollow rings this size (points), the next larger
SAME_RING_PT = 9.0


def _draw(ax: Axes, name: str, histories: Sequence[Sequence[EpochRecord]], metric: str,
          style: Mapping[str, Any], drawn: dict[str, tuple[list[int], list[float]]]) -> None:
    """One series' line (and band); a line identical to one already drawn gets rings around its
    points, and its legend entry says which it hides under."""
    histories = [h for h in histories if h]
    if not histories:
        return
    epochs, means, stds = mean_band(histories, metric)
    shown = f"{name} (mean of {len(histories)})" if len(histories) > 1 else name
    same = [other for other, curve in drawn.items() if curve == (epochs, means)]
    drawn[shown] = (epochs, means)
    marker: dict[str, Any] = {"marker": "." if len(epochs) < 30 else None}
    if same:
        shown += f" (identical to {same[0]})"
        marker = {"marker": "o", "markerfacecolor": "none", "markersize": SAME_RING_PT + 3 * (len(same) - 1)}
    (line,) = ax.plot(epochs, means, label=shown, **marker, **style)
    band = [(e, m - s, m + s) for e, m, s in zip(epochs, means, stds) if not math.isnan(s)]
    if band:
        ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                        color=line.get_color(), alpha=0.2, linewidth=0)


def plot_epochs(series: Sequence[Series], metric: str, ylabel: str, title: str,
                styles: Optional[Sequence[Mapping[str, Any]]] = None) -> Figure:
    """`metric` of EpochRecord per epoch: per series one line, or with several runs their mean
    and a shaded band of ± one standard deviation; `styles`: each series' colour and line style."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    drawn: dict[str, tuple[list[int], list[float]]] = {}
    for i, (name, histories) in enumerate(series):
        _draw(ax, name, histories, metric, styles[i] if styles else {}, drawn)
    seeds = any(len([h for h in histories if h]) > 1 for _, histories in series)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel + (", mean ± std over seeds" if seeds else ""))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center",
                transform=ax.transAxes)
    return fig


LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3)), (0, (3, 1, 1, 1, 1, 1)))


def encode(values: Sequence[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """Per series its colour by its first value (C0, C1, ... in order of first appearance) and its
    line style by its second (solid, dashed, dotted, ...)."""
    firsts, seconds = list(dict.fromkeys(v[0] for v in values)), list(dict.fromkeys(v[1] for v in values))
    return [{"color": f"C{firsts.index(a) % 10}", "linestyle": LINESTYLES[seconds.index(b) % len(LINESTYLES)]}
            for a, b in values]


def plot_validation(series: Sequence[Series], styles: Optional[Sequence[Mapping[str, Any]]] = None,
                    title: str = "validation accuracy") -> Figure:
    """Validation acc1 per epoch (curves.png)."""
    return plot_epochs(series, "val_acc1", "val acc1 (%)", title, styles)


def plot_train_loss(series: Sequence[Series], styles: Optional[Sequence[Mapping[str, Any]]] = None,
                    title: str = "training loss") -> Figure:
    """Training loss per epoch (loss.png)."""
    return plot_epochs(series, "train_loss", "train loss", title, styles)


def save_png(fig: Figure, path: Path) -> None:
    title = fig.axes[0].get_title() if fig.axes else ""
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Title": title or path.stem})
