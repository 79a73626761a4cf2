"""A plan's output: the ranked markdown table with each bottleneck, plan.json (every candidate's
figures, the profiles, the inputs), plan.png (step time against bytes, the Pareto front marked; the
front x back heatmap of step time) and the `train.py -m` command that measures the top candidates."""
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from edgesplit.plan.accuracy import ACC_HEADER, Results, acc_cells, acc_record, plot_accuracy
from edgesplit.plan.measure import Profile
from edgesplit.plan.space import Figures, pareto_front, ranked
from edgesplit.report.tables import human_bytes, markdown_table

HEADER = ["rank", "front", "back", "compressor", "chunks", "step (s)", "samples/s", "up / step",
          "down / step", "edge peak", "cloud peak", "bottleneck"]


def label(f: Figures) -> str:
    c = f.candidate
    return f"{c.front}/{c.back} {c.compressor} x{c.chunks}"


def table(figures: Sequence[Figures], results: Optional[Results] = None) -> str:
    """The ranked candidates, fastest first; with `results`, each one's measured accuracy too."""
    rows = [[i + 1, f.candidate.front, f.candidate.back, f.candidate.compressor, f.candidate.chunks,
             f"{f.step_s:.4g}", f"{f.samples_per_s:.4g}", human_bytes(f.up_bytes), human_bytes(f.down_bytes),
             human_bytes(f.edge_peak_bytes), human_bytes(f.cloud_peak_bytes), f.bottleneck,
             *(acc_cells(f, results) if results is not None else [])]
            for i, f in enumerate(figures)]
    return markdown_table([*HEADER, *(ACC_HEADER if results is not None else [])], rows)


def measure_command(figures: Sequence[Figures], top: int, overrides: Sequence[str],
                    edge_slowdown: float = 1.0) -> str:
    """`python train.py -m` over the top candidates' fronts, backs, compressors and chunks (a sweep of
    their grid: it holds each of them), with the plan's own overrides and its slower edge emulated."""
    best = list(figures[:top])

    def values(attr: str) -> str:
        return ",".join(dict.fromkeys(str(getattr(f.candidate, attr)) for f in best))

    replaced = ("plan.", "partition.front=", "partition.back=", "compressor=", "pipeline_backend.chunks=")
    kept = [o for o in overrides if not o.startswith(replaced)]
    slower = [f"pipeline_backend.edge_slowdown={edge_slowdown:g}"] if edge_slowdown != 1 else []
    return " ".join(["python train.py -m", *kept, *slower, f"partition.front={values('front')}",
                     f"partition.back={values('back')}", f"compressor={values('compressor')}",
                     f"pipeline_backend.chunks={values('chunks')}"])


def plan_record(figures: Sequence[Figures], profiles: Mapping[int, Profile], inputs: Mapping[str, Any],
                results: Optional[Results] = None) -> Dict[str, Any]:
    """plan.json's content: the inputs, every candidate's figures (ranked) with its measured accuracy
    where `results` are given, the profiles by chunks, and the results' dirs and unmatched groups."""
    record = {"inputs": dict(inputs),
              "candidates": [{"rank": i + 1, **asdict(f.candidate),
                              **{k: v for k, v in asdict(f).items() if k != "candidate"},
                              "bytes_per_step": f.bytes_per_step,
                              **(acc_record(f, results) if results is not None else {})}
                             for i, f in enumerate(figures)],
              "profiles": {str(m): p.to_dict() for m, p in profiles.items()}}
    if results is not None:
        record["results"] = {"dirs": results.dirs, "steps_per_epoch": results.steps_per_epoch,
                             "unmatched": results.unmatched}
    return record


def best_per_split(figures: Sequence[Figures]) -> Dict[Tuple[int, int], Figures]:
    """The fastest compressor and chunks of each (front, back), by the ranking's order."""
    best: Dict[Tuple[int, int], Figures] = {}
    for f in ranked(figures):
        best.setdefault((f.candidate.front, f.candidate.back), f)
    return best


def heatmap(ax: Axes, figures: Sequence[Figures]) -> None:
    """Front x back: each split's predicted step time at its fastest compressor and chunks, annotated;
    a split the space leaves out (no cloud unit) blank."""
    best = best_per_split(figures)
    fronts = sorted({f for f, _ in best})
    backs = sorted({b for _, b in best})
    grid = np.full((len(fronts), len(backs)), np.nan)
    for (f, b), fig in best.items():
        grid[fronts.index(f), backs.index(b)] = fig.step_s
    cmap = colormaps["viridis_r"].with_extremes(bad="0.92")
    image = ax.imshow(grid, cmap=cmap, origin="lower", aspect="auto")
    mid = np.nanmin(grid) + (np.nanmax(grid) - np.nanmin(grid)) / 2
    for i, j in zip(*np.nonzero(np.isnan(grid))):
        ax.text(j, i, "left out:\nno cloud unit", ha="center", va="center", fontsize=7, color="0.4")
    for (f, b), fig in best.items():
        c = fig.candidate
        ax.text(backs.index(b), fronts.index(f), f"{fig.step_s:.3g} s\n{c.compressor} x{c.chunks}",
                ha="center", va="center", fontsize=8, color="white" if fig.step_s > mid else "black")
    top = ranked(figures)[0].candidate  # the plan's fastest: framed
    ax.add_patch(Rectangle((backs.index(top.back) - 0.5, fronts.index(top.front) - 0.5), 1, 1, fill=False,
                           edgecolor="C3", linewidth=2.5))
    ax.set_xticks(range(len(backs)), [str(b) for b in backs])
    ax.set_yticks(range(len(fronts)), [str(f) for f in fronts])
    ax.set_xlabel("back units (on the edge)")
    ax.set_ylabel("front units (on the edge)")
    ax.set_title("predicted step time (s) at each split's fastest compressor x chunks; framed: the "
                 "fastest", fontsize=9)
    ax.figure.colorbar(image, ax=ax, label="step time (s)")


def plot(figures: Sequence[Figures], title: str) -> Figure:
    """Left: predicted step time against payload bytes per step (log), every candidate a dot, the
    Pareto front joined and labelled; right: the front x back heatmap of this link."""
    fig = Figure(figsize=(13, 5))
    FigureCanvasAgg(fig)
    ax, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    ax.scatter([f.bytes_per_step for f in figures], [f.step_s for f in figures], s=14, color="0.6",
               label="candidate")
    front = pareto_front(figures)
    ax.plot([f.bytes_per_step for f in front], [f.step_s for f in front], "o-", color="C3",
            label="Pareto front")
    for f in front:
        ax.annotate(label(f), (f.bytes_per_step, f.step_s), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    if min(f.bytes_per_step for f in figures) > 0:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5 MB, ...: a label each
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_bytes(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())  # a log axis labels minor ticks too: they overlap
    ax.set_xlabel("payload bytes per step (up + down)")
    ax.set_ylabel("predicted step time (s)")
    ax.set_title("step time against bytes", fontsize=9)
    ax.legend(fontsize=8)
    heatmap(right, figures)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_outputs(out_dir: Path, figures: Sequence[Figures], profiles: Mapping[int, Profile],
                  inputs: Mapping[str, Any], title: str, results: Optional[Results] = None) -> List[Path]:
    """plan.md, plan.json and plan.png under `out_dir`; with `results`, plan_accuracy.png too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "plan.md", out_dir / "plan.json", out_dir / "plan.png"]
    paths[0].write_text(f"# {title}\n\n{table(figures, results)}\n")
    paths[1].write_text(json.dumps(plan_record(figures, profiles, inputs, results), indent=1))
    plot(figures, title).savefig(paths[2], dpi=100)
    if results is not None:
        paths.append(out_dir / "plan_accuracy.png")
        plot_accuracy(figures, results, title).savefig(paths[-1], dpi=100)
    return paths
