"""Many-edge runs in a report: clients.png, each seed group's best accuracy against the bytes one
client sent and received over the whole run (activations and gradients, and the edge weights for
averaging), a marker per algorithm, a colour per client count."""
from typing import Optional, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from edgesplit.report.pareto import best_acc
from edgesplit.report.runs import Group, Run, value_order
from edgesplit.report.tables import human_bytes, stat

COUNT, ALGORITHM = "clients.count", "clients.algorithm"
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def swept(keys: Sequence[str]) -> bool:
    return COUNT in keys or ALGORITHM in keys


def bytes_per_client(run: Run) -> Optional[float]:
    """A multi-client run's bytes per client over its epochs, each way, link and averaging: the sum of
    each epoch's `clients/*_bytes_per_round` x rounds, over the clients (None for one edge)."""
    clients = (run.summary.clients if run.summary else None) or {}
    history, count = clients.get("history") or [], clients.get("count")
    if not history or not count:
        return None
    rounds = int(clients.get("rounds_per_epoch") or 1)
    total = sum(h.get("clients/link_bytes_per_round", 0.0) + h.get("clients/averaging_bytes_per_round", 0.0)
                for h in history)
    return total * rounds / count


def plot_clients(groups: Sequence[Group], keys: Sequence[str]) -> Figure:
    """Best val acc1 (mean over seeds, error bars ± std) against bytes per client (log axis, mean
    ± std), a marker per algorithm, a colour per count; one panel per value of the other swept keys
    but seed (e.g. the partition)."""
    runs = [r for g in groups for r in g.runs]
    others = [k for k in keys if k not in (COUNT, ALGORITHM)]
    panels = list(dict.fromkeys(tuple(g.overrides.get(k) for k in others) for g in groups))
    algorithms = value_order([r.overrides.get(ALGORITHM) for r in runs])
    counts = value_order([r.overrides.get(COUNT) for r in runs])
    colours = [f"C{i}" for i in range(len(counts))]
    fig = Figure(figsize=(5.5 * len(panels), 4.5))
    for p, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for g in groups:
            if tuple(g.overrides.get(k) for k in others) != panel:
                continue
            x, y = stat([bytes_per_client(r) for r in g.runs]), stat([best_acc(r) for r in g.runs])
            if x is None or y is None:
                continue
            colour = colours[counts.index(g.overrides.get(COUNT))]
            marker = MARKERS[algorithms.index(g.overrides.get(ALGORITHM)) % len(MARKERS)]
            ax.errorbar(x.mean, y.mean, xerr=x.std or 0.0, yerr=y.std or 0.0, fmt=marker, color=colour,
                        markersize=8, capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per client over the run (link + averaging, up + down)")
        ax.set_ylabel("best val acc1 (%)")
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(others, panel)) or "all runs", fontsize=9)
        ax.xaxis.set_major_formatter(lambda v, _: human_bytes(v))
        ax.xaxis.set_minor_formatter(NullFormatter())  # the log axis's 2x, 3x ... ticks unlabelled
    handles = ([Line2D([], [], color=c, marker="o", linestyle="", label=f"{COUNT}={n}")
                for c, n in zip(colours, counts)]
               + [Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="", label=a)
                  for i, a in enumerate(algorithms)])
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("many edges: accuracy against bytes per client (mean ± std over seeds)", fontsize=9)
    fig.subplots_adjust(bottom=0.22)
    return fig
