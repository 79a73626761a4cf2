"""`plan.results=DIR`: each candidate joined with its measured best accuracy over seeds (the report's
run reader and seed groups), its predicted time to train, and plan_accuracy.png."""
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra import compose, initialize_config_dir
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from edgesplit.config import CONF_DIR
from edgesplit.errors import ConfigError
from edgesplit.logs.summary import RunSummary
from edgesplit.plan.inputs import PlanInputs
from edgesplit.plan.space import Candidate, Figures
from edgesplit.report.labels import Label, place_labels
from edgesplit.report.pareto import best_acc
from edgesplit.report.runs import Group, ReportError, find_runs, group_runs
from edgesplit.report.tables import DASH, Stat, stat

# a run's override of each candidate field; a run without one ran the config's default
JOIN_KEYS = {"front": "partition.front", "back": "partition.back", "compressor": "compressor",
             "chunks": "pipeline_backend.chunks"}
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Measured:
    """A candidate's seed group: best val acc1 over its seeds, and the mean epoch it was reached at."""
    acc: Stat
    epochs_to_best: float
    label: str  # the group's other overrides, when several groups matched the candidate


@dataclass(frozen=True)
class Results:
    """The join of a plan with a sweep: the measured candidates, what matched none, steps per epoch."""
    measured: Dict[Candidate, Measured]
    unmatched: List[str]  # seed groups (as `front/back compressor xchunks`) that no candidate has
    steps_per_epoch: int
    dirs: List[str]

    def time_to_train_s(self, f: Figures) -> Optional[float]:
        """Predicted step time x steps per epoch x the epochs its runs took to their best accuracy."""
        m = self.measured.get(f.candidate)
        return None if m is None else f.step_s * self.steps_per_epoch * m.epochs_to_best


def result_dirs(value: Any) -> List[str]:
    """plan.results as a list of dirs: one path, or a list of them (as `python -m edgesplit.report`)."""
    dirs = OmegaConf.to_container(value) if OmegaConf.is_list(value) else [value]
    if not dirs or not all(isinstance(d, str) and d for d in dirs):
        raise ConfigError(f"plan.results={value!r} is invalid: a sweep dir, or a list of them [DIR,DIR]")
    return [str(d) for d in dirs]


def run_defaults(cfg: DictConfig, overrides: Sequence[str]) -> Dict[str, str]:
    """The candidate fields of a run that overrides none of them: the plan's own config (its
    overrides, e.g. the sweep's shared ones, on the conf tree's defaults)."""
    rest = [o for o in overrides if not o.startswith("plan.")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=rest, return_hydra_config=True).hydra
    choices = hydra_cfg.runtime.choices
    return {"front": str(cfg.partition.front), "back": str(cfg.partition.back),
            "compressor": str(choices.compressor), "chunks": str(cfg.pipeline_backend.chunks)}


def plan_results(inputs: PlanInputs, cands: Sequence[Candidate]) -> Optional[Results]:
    """The join of `plan.results` (null: None), before anything is measured: a bad dir fails first."""
    if inputs.plan.results is None:
        return None
    first = next(iter(inputs.parts.values()))
    steps = first.spec.facts.train_size // inputs.batch_size  # the training loader drops a last short batch
    return join(result_dirs(inputs.plan.results), cands, run_defaults(inputs.cfg, inputs.overrides), steps)


def epochs_to_best(s: RunSummary) -> int:
    """The first epoch whose val acc1 is the run's best (summary.json's history)."""
    best = s.best_val_acc1
    return next((h.epoch for h in s.history if best is not None and h.val_acc1 >= best), s.epochs)


def _candidate(g: Group, defaults: Mapping[str, str]) -> Optional[Candidate]:
    v = {field: g.overrides.get(key, defaults[field]) for field, key in JOIN_KEYS.items()}
    try:
        return Candidate(int(v["front"]), int(v["back"]), v["compressor"], int(v["chunks"]))
    except ValueError:
        return None  # e.g. an interpolation: no candidate has it


def candidate_label(c: Candidate) -> str:
    return f"{c.front}/{c.back} {c.compressor} x{c.chunks}"


def _name(c: Optional[Candidate], g: Group) -> str:
    return candidate_label(c) if c else g.label(list(JOIN_KEYS.values()))


def join(dirs: List[str], cands: Sequence[Candidate], defaults: Mapping[str, str],
         steps_per_epoch: int) -> Results:
    """Each candidate's seed group in `dirs` (the report's find_runs and group_runs): best val acc1 as
    mean ± std over its seeds; where groups that differ in other keys match one candidate, the best."""
    try:
        groups = group_runs(find_runs(dirs))
    except ReportError as e:
        raise ConfigError(f"plan.results: {e}") from None
    keys = set(cands)
    measured: Dict[Candidate, Measured] = {}
    unmatched: List[str] = []
    for g in groups:
        c = _candidate(g, defaults)
        with_acc = [r.summary for r in g.runs if r.summary is not None and best_acc(r) is not None]
        acc = stat([s.best_val_acc1 for s in with_acc])
        if c not in keys or acc is None:
            unmatched += [_name(c, g)] if c not in keys else []
            continue
        epochs = sum(epochs_to_best(s) for s in with_acc) / len(with_acc)
        others = ", ".join(f"{k}={v}" for k, v in g.overrides.items() if k not in JOIN_KEYS.values())
        if c not in measured or acc.mean > measured[c].acc.mean:
            measured[c] = Measured(acc, epochs, others)
    return Results(measured, list(dict.fromkeys(unmatched)), steps_per_epoch, dirs)


def summary_lines(figures: Sequence[Figures], results: Results) -> List[str]:
    """What the join found, for the terminal: the fastest to the best accuracy, what matched nothing."""
    lines = [f"accuracy from {', '.join(results.dirs)}: {len(results.measured)} of {len(figures)} "
             f"candidate(s) measured ({len(figures) - len(results.measured)} {NOT_MEASURED})"]
    front = fastest_to_accuracy(figures, results)
    if front:
        best, c = front[-1], front[-1].candidate
        lines.append(f"best accuracy soonest: front {c.front}, back {c.back}, {c.compressor}, {c.chunks} "
                     f"chunks: {results.measured[c].acc.mean:.2f}% in a predicted "
                     f"{results.time_to_train_s(best):.4g} s")
    if results.unmatched:
        lines.append(f"results that match no candidate: {'; '.join(results.unmatched)}")
    return lines


ACC_HEADER = ["best val acc1 (%)", "epochs to best", "time to best (s)"]


def acc_cells(f: Figures, results: Results) -> List[str]:
    """A candidate's accuracy columns: mean ± std (n seeds), epochs, predicted time; or not measured."""
    m, t = results.measured.get(f.candidate), results.time_to_train_s(f)
    if m is None or t is None:
        return [NOT_MEASURED, DASH, DASH]
    std = DASH if m.acc.std is None else f"{m.acc.std:.2f}"
    return [f"{m.acc.mean:.2f} ± {std} (n={m.acc.n})", f"{m.epochs_to_best:g}", f"{t:.4g}"]


def acc_record(f: Figures, results: Results) -> Dict[str, Any]:
    """plan.json's accuracy fields of a candidate (null where not measured)."""
    m = results.measured.get(f.candidate)
    if m is None:
        return {"best_val_acc1_mean": None, "best_val_acc1_std": None, "seeds": 0, "epochs_to_best": None,
                "time_to_train_s": None, "measured_with": None}
    return {"best_val_acc1_mean": m.acc.mean, "best_val_acc1_std": m.acc.std, "seeds": m.acc.n,
            "epochs_to_best": m.epochs_to_best, "time_to_train_s": results.time_to_train_s(f),
            "measured_with": m.label}


def fastest_to_accuracy(figures: Sequence[Figures], results: Results) -> List[Figures]:
    """The measured candidates no other reaches as high an accuracy sooner, by time to train."""
    timed = sorted((f for f in figures if f.candidate in results.measured),
                   key=lambda f: (results.time_to_train_s(f), -results.measured[f.candidate].acc.mean))
    out: List[Figures] = []
    for f in timed:
        if not out or results.measured[f.candidate].acc.mean > results.measured[out[-1].candidate].acc.mean:
            out.append(f)
    return out


def time_unit(seconds: Sequence[float]) -> Tuple[str, float]:
    """The unit a time axis reads best in (h, min or s) for the largest of `seconds`, and its length."""
    top = max(seconds, default=0.0)
    return ("h", 3600.0) if top >= 3 * 3600 else ("min", 60.0) if top >= 180 else ("s", 1.0)


def plot_accuracy(figures: Sequence[Figures], results: Results, title: str) -> Figure:
    """Best val acc1 (mean, ± std over seeds) against predicted time to train, the front joined."""
    fig = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    known = [f for f in figures if f.candidate in results.measured]
    unit, per = time_unit([results.time_to_train_s(f) or 0.0 for f in known])

    def xy(fs: Sequence[Figures]) -> Tuple[List[float], List[float]]:
        return ([(results.time_to_train_s(f) or 0.0) / per for f in fs],
                [results.measured[f.candidate].acc.mean for f in fs])
    ax.errorbar(*xy(known), yerr=[results.measured[f.candidate].acc.std or 0.0 for f in known], fmt="o",
                color="0.5", markersize=4, capsize=3, label="measured candidate")
    front = fastest_to_accuracy(figures, results)
    ax.plot(*xy(front), "o-", color="C3", markersize=7, label="fastest to each accuracy")
    ax.margins(x=0.08, y=0.1)
    missing = len(figures) - len(known)
    ax.set_xlabel(f"predicted time to the best accuracy ({unit}): step x {results.steps_per_epoch} "
                  "steps/epoch x epochs to best")
    ax.set_ylabel("best val acc1 (%), mean ± std over seeds")
    ax.set_title(title + (f"\n({missing} candidate(s) not measured)" if missing else ""), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the labelled points
    fig.tight_layout()
    place_labels(ax, [Label(candidate_label(f.candidate), (x, y), "C3" if f in front else "0.35",
                            7.0 if f in front else 4.0)
                      for f, x, y in zip(known, *xy(known))], "x-small")  # none covers another or a marker
    return fig
