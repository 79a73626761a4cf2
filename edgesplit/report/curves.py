"""The curves of a report: val accuracy and train loss per epoch, a line (or mean and band) per group."""
import math
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

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


def _draw(ax: Axes, name: str, histories: Sequence[Sequence[EpochRecord]], metric: str) -> None:
    histories = [h for h in histories if h]
    if not histories:
        return
    epochs, means, stds = mean_band(histories, metric)
    marker = "." if len(epochs) < 30 else None
    if len(histories) == 1:
        ax.plot(epochs, means, marker=marker, label=name)
        return
    (line,) = ax.plot(epochs, means, marker=marker, label=f"{name} (mean of {len(histories)})")
    band = [(e, m - s, m + s) for e, m, s in zip(epochs, means, stds) if not math.isnan(s)]
    if band:
        ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                        color=line.get_color(), alpha=0.2, linewidth=0)


def plot_epochs(series: Sequence[Series], metric: str, ylabel: str, title: str) -> Figure:
    """`metric` of EpochRecord per epoch: per series one line, or with several runs their mean
    and a shaded band of ± one standard deviation."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for name, histories in series:
        _draw(ax, name, histories, metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center",
                transform=ax.transAxes)
    return fig


def plot_validation(series: Sequence[Series]) -> Figure:
    """Validation acc1 per epoch (curves.png)."""
    return plot_epochs(series, "val_acc1", "val acc1 (%)", "validation accuracy")


def plot_train_loss(series: Sequence[Series]) -> Figure:
    """Training loss per epoch (loss.png)."""
    return plot_epochs(series, "train_loss", "train loss", "training loss")


def save_png(fig: Figure, path: Path) -> None:
    title = fig.axes[0].get_title() if fig.axes else ""
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Title": title or path.stem})
