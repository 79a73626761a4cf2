"""The validation curves of a report: one line per run, saved as a PNG."""
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from edgesplit.run_summary import EpochRecord


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


def plot_validation(series: Sequence[tuple[str, Sequence[EpochRecord]]]) -> Figure:
    """Validation acc1 per epoch, one line per (label, history) that has a finished epoch."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for name, history in series:
        if history:
            ax.plot([h.epoch for h in history], [h.val_acc1 for h in history],
                    marker="." if len(history) < 30 else None, label=name)
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


def save_png(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Title": "validation accuracy"})
