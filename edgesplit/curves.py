"""The validation curves of a report: one line per run, saved as a PNG that names its lines."""
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# PNG text chunk that lists the plotted runs' labels, one a line, in plot order.
LINES_KEY = "edgesplit-lines"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def curve_points(history: Sequence[Mapping[str, Any]],
                 metric: str = "val_acc1") -> list[tuple[float, float]]:
    """(epoch, metric) of every history entry that holds both as numbers."""
    return [(h["epoch"], h[metric]) for h in history
            if number(h.get("epoch")) is not None and number(h.get(metric)) is not None]


def plot_validation(series: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> Figure:
    """Validation acc1 per epoch, one line per (label, history) that has a finished epoch."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for label, history in series:
        points = curve_points(history)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(points) < 30 else None, label=label)
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
    """Write the figure; the PNG's `edgesplit-lines` text chunk lists its lines' labels."""
    labels = [str(line.get_label()) for ax in fig.axes for line in ax.get_lines()]
    fig.savefig(path, dpi=100, bbox_inches="tight",
                metadata={"Title": "validation accuracy", LINES_KEY: "\n".join(labels)})


def png_lines(path: Path) -> list[str]:
    """The labels `save_png` wrote into a PNG (ValueError if it is no PNG)."""
    from PIL import Image  # matplotlib's own dependency

    if path.read_bytes()[:8] != PNG_SIGNATURE:
        raise ValueError(f"{path} is not a PNG")
    with Image.open(path) as image:
        text = image.info.get(LINES_KEY, "")
    return text.split("\n") if text else []
