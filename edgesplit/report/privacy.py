"""Runs that measured privacy (edgesplit.privacy): leakage columns beside accuracy and bytes, and
privacy.png (accuracy against each leakage figure, bytes per batch as marker size)."""
from typing import Any, Callable, Optional, Sequence

from matplotlib.figure import Figure

from edgesplit.report.pareto import best_acc, payload_bytes
from edgesplit.report.runs import SEED_KEY, Group, Run
from edgesplit.report.tables import fmt, group_cell, human_bytes, markdown_table, stat

# (column, summary.json privacy key: each figure's largest over the epochs), digits shown
LEAKS = [("label leak AUC (norm)", "label_auc_norm_best", 3),
         ("label leak AUC (cosine)", "label_auc_cosine_best", 3), ("input dCor", "input_dcor_best", 3),
         ("inversion PSNR (dB)", "inversion_psnr_best", 1), ("inversion SSIM", "inversion_ssim_best", 3)]


def leak(key: str) -> Callable[[Run], Any]:
    return lambda run: run.summary.privacy.get(key) if run.summary else None


def _shown(digits: int) -> Callable[[Any], str]:
    return lambda v: fmt(v, digits)


def measured(runs: Sequence[Run]) -> list[tuple[str, str, int]]:
    """The LEAKS columns some run has a figure of."""
    return [c for c in LEAKS if any(leak(c[1])(r) is not None for r in runs)]


def privacy_table(groups: Sequence[Group], keys: Sequence[str]) -> str:
    """Per seed group: accuracy, bytes per batch and each leakage figure, mean ± std (n)."""
    columns = measured([r for g in groups for r in g.runs])
    rows = [[*(g.overrides.get(k, "—") for k in keys), len(g.runs),
             group_cell(g.runs, best_acc, notes=False),
             group_cell(g.runs, payload_bytes, human_bytes, notes=False),
             *(group_cell(g.runs, leak(key), _shown(digits), notes=False) for _, key, digits in columns)]
            for g in groups]
    return markdown_table([*keys, "seeds", "best val acc1", "bytes/batch (up + down)",
                           *(c[0] for c in columns)], rows)


def _label(group: Group, keys: Sequence[str]) -> str:
    return ", ".join(str(group.overrides.get(k)) for k in keys if k != SEED_KEY) or "run"


def plot_privacy(groups: Sequence[Group], keys: Sequence[str]) -> Figure:
    """One panel per leakage figure measured: best val acc1 (mean over seeds) against it (mean,
    error bars ± std), a marker per seed group sized by its payload bytes per batch."""
    columns = measured([r for g in groups for r in g.runs])
    fig = Figure(figsize=(5.0 * max(len(columns), 1), 4.5))
    sizes = [stat([payload_bytes(r) for r in g.runs]) for g in groups]
    largest = max((s.mean for s in sizes if s is not None), default=1.0) or 1.0
    for i, (title, key, _) in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        for g, size in zip(groups, sizes):
            x, y = stat([leak(key)(r) for r in g.runs]), stat([best_acc(r) for r in g.runs])
            if x is None or y is None:
                continue
            area = 20 + 400 * (size.mean / largest if size is not None else 0.0)
            ax.errorbar(x.mean, y.mean, xerr=x.std or 0.0, yerr=y.std or 0.0, fmt="none", alpha=0.5)
            ax.scatter([x.mean], [y.mean], s=area, alpha=0.6)
            ax.annotate(_label(g, keys), (x.mean, y.mean), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xlabel(f"{title}, largest over the epochs")
        ax.set_ylabel("best val acc1 (%)")
        ax.set_title(f"accuracy vs {title}", fontsize=9)
    fig.suptitle("privacy: mean ± std over seeds; marker area: payload bytes per batch", fontsize=9)
    return fig


def section(groups: Sequence[Group], keys: Sequence[str], over: str) -> Optional[list[str]]:
    """The report's privacy section, or None when no run measured any leakage."""
    if not measured([r for g in groups for r in g.runs]):
        return None
    return ["", f"## Privacy: what the cloud learned (largest over the epochs){over}", "",
            privacy_table(groups, keys)]
