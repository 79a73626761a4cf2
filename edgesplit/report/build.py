"""`python -m edgesplit.report DIR...`: seed-style markdown tables (mean ± std over seeds) and curves."""
import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from matplotlib.figure import Figure

from edgesplit.report import clients, pareto, privacy
from edgesplit.report.header import header_lines
from edgesplit.report.curves import (Series, encode, label as _label, plot_train_loss, plot_validation,
                                     run_label, save_png)
from edgesplit.report.runs import (SEED_KEY, Group, ReportError, Run, find_runs, group_runs, swept_keys,
                                   value_order)
from edgesplit.logs.summary import RunSummary
from edgesplit.report.tables import (DASH, Getter, fmt as _fmt, group_cell, human_bytes, markdown_table,
                                     states)

__all__ = ["ReportError", "Run", "build_report", "find_runs", "human_bytes", "main", "plot_curves",
           "plot_loss", "swept_keys", "write_report"]
BACKEND_KEYS = ("pipeline_backend", "pipeline_backend.name")


def _value_order(runs: Sequence[Run], key: str) -> list[Optional[str]]:
    return value_order([run.overrides.get(key) for run in runs])


def setting_keys(runs: Sequence[Run]) -> list[str]:
    """The swept keys a seed group shares: all but `seed`."""
    return [k for k in swept_keys(runs) if k != SEED_KEY]


def _summary_cells(s: RunSummary, overhead: bool) -> list[Any]:
    """A run's cells of the runs table from `epochs` on; dashes for what it has not reported yet."""
    comm = s.comm
    cells = [s.epochs, _fmt(s.best_val_acc1), _fmt(s.val_acc1), _fmt(s.time_per_batch_s, 3),
             _fmt(s.samples_per_s, 0), human_bytes(s.peak_memory_bytes),
             human_bytes(comm.up_bytes_per_batch if comm else None),
             human_bytes(comm.down_bytes_per_batch if comm else None)]
    if overhead:
        cells.append(DASH if comm is None else f"{human_bytes(comm.overhead_up_bytes_per_batch)} / "
                                               f"{human_bytes(comm.overhead_down_bytes_per_batch)}")
    return cells + [DASH if comm is None else f"{comm.fp32_ratio:.2f}x"]


def _has_overhead(run: Run) -> bool:
    comm = run.summary.comm if run.summary else None
    return comm is not None and comm.overhead_up_bytes_per_batch + comm.overhead_down_bytes_per_batch > 0


def runs_table(runs: Sequence[Run], keys: Sequence[str]) -> str:
    """One row per run; an `overhead up / down` column (transport bytes per batch) where a run has any."""
    overhead = any(_has_overhead(r) for r in runs)
    header = ["run", *keys, "status", "epochs", "best val acc1", "final val acc1", "time/batch (s)",
              "samples/s", "peak memory", "up/batch", "down/batch",
              *(["overhead up / down"] if overhead else []), "compression"]
    no_summary = [DASH] * (len(header) - len(keys) - 2)
    rows = [[r.name, *(_label(r.overrides.get(k)) for k in keys), r.status,
             *(_summary_cells(r.summary, overhead) if r.summary else no_summary)] for r in runs]
    return markdown_table(header, rows)


def _figure(get: Callable[[RunSummary], Any]) -> Getter:
    return lambda run: get(run.summary) if run.summary else None


def _comm(get: Callable[[Any], Any]) -> Getter:
    return lambda run: get(run.summary.comm) if run.summary and run.summary.comm else None


BEST = _figure(lambda s: s.best_val_acc1)
TIME = _figure(lambda s: s.time_per_batch_s)
MEMORY = _figure(lambda s: s.peak_memory_bytes)
# the seeds table: (header, figure, shown as); the overhead columns only where a run has any
METRICS: list[tuple[str, Getter, Callable[[Any], str]]] = [
    ("best val acc1", BEST, _fmt), ("final val acc1", _figure(lambda s: s.val_acc1), _fmt),
    ("time/batch (s)", TIME, lambda v: _fmt(v, 3)),
    ("samples/s", _figure(lambda s: s.samples_per_s), lambda v: _fmt(v, 0)),
    ("peak memory", MEMORY, human_bytes), ("up/batch", _comm(lambda c: c.up_bytes_per_batch), human_bytes),
    ("down/batch", _comm(lambda c: c.down_bytes_per_batch), human_bytes),
    ("overhead up/batch", _comm(lambda c: c.overhead_up_bytes_per_batch), human_bytes),
    ("overhead down/batch", _comm(lambda c: c.overhead_down_bytes_per_batch), human_bytes),
    ("compression", _comm(lambda c: c.fp32_ratio), lambda v: DASH if v is None else f"{v:.2f}x"),
]


def seeds_table(groups: Sequence[Group], keys: Sequence[str]) -> str:
    """One row per seed group: its seeds, how its runs stand, and every metric as mean ± std (n)."""
    overhead = any(_has_overhead(r) for g in groups for r in g.runs)
    metrics = [m for m in METRICS if overhead or not m[0].startswith("overhead")]
    rows = [[*(_label(g.overrides.get(k)) for k in keys),
             ", ".join(_label(r.overrides.get(SEED_KEY)) for r in g.runs), states(g.runs),
             *(group_cell(g.runs, get, show, notes=False) for _, get, show in metrics)] for g in groups]
    return markdown_table([*keys, "seeds", "runs", *(m[0] for m in metrics)], rows)


def _where(runs: Sequence[Run], **values: Optional[str]) -> list[Run]:
    return [r for r in runs if all(r.overrides.get(k) == v for k, v in values.items())]


def pivot_table(runs: Sequence[Run], row_key: str, col_key: str, figure: Getter = BEST,
                show: Callable[[Any], str] = _fmt) -> str:
    """`figure` (best_val_acc1) with rows = values of `row_key`, columns = values of `col_key`; a
    cell's runs differ only in seed: their mean ± std (n)."""
    rows_v, cols_v = _value_order(runs, row_key), _value_order(runs, col_key)
    body = [[_label(rv), *(group_cell(_where(runs, **{row_key: rv, col_key: cv}), figure, show)
                           for cv in cols_v)] for rv in rows_v]
    return markdown_table([f"{row_key} \\ {col_key}", *(_label(c) for c in cols_v)], body)


def backends_table(runs: Sequence[Run], key: str) -> str:
    """The seed's layout: columns = backends in the sweep's order, rows = accuracy, time per
    batch, peak memory (each the mean ± std (n) over a backend's seeds)."""
    cols = _value_order(runs, key)

    def row(title: str, get: Getter, show: Callable[[Any], str]) -> list[str]:
        return [title, *(group_cell(_where(runs, **{key: b}), get, show) for b in cols)]

    return markdown_table(["", *(_label(b) for b in cols)], [
        row("Val_acc1%", BEST, _fmt), row("Time per batch (s)", TIME, lambda v: _fmt(v, 3)),
        row("Memory (peak)", MEMORY, human_bytes)])


def _per_client(tag: str) -> Getter:
    """A multi-client run's last-epoch `clients/<tag>` per client (edgesplit.clients.figures)."""
    def get(run: Run) -> Any:
        clients = (run.summary.clients if run.summary else None) or {}
        last = (clients.get("history") or [{}])[-1]
        return last[f"clients/{tag}"] / clients["count"] if f"clients/{tag}" in last else None
    return get


def clients_tables(runs: Sequence[Run], keys: Sequence[str], over: str) -> list[str]:
    """Where clients.count and clients.algorithm were swept: per value of the other swept keys,
    best_val_acc1 and each client's link bytes per round, rows the count, columns the algorithm."""
    count, algorithm = "clients.count", "clients.algorithm"
    if count not in keys or algorithm not in keys:
        return []
    others = [k for k in keys if k not in (count, algorithm)]
    parts: list[str] = []
    for values in dict.fromkeys(tuple(r.overrides.get(k) for k in others) for r in runs):
        some = _where(runs, **dict(zip(others, values)))
        where = ", ".join(f"{k}={_label(v)}" for k, v in zip(others, values))
        for title, figure, show in [("best_val_acc1 (%)", BEST, _fmt),
                                    ("up+down bytes per client and round",
                                     _per_client("link_bytes_per_round"), human_bytes),
                                    ("FedAvg bytes per client and round (up+down)",
                                     _per_client("averaging_bytes_per_round"), human_bytes)]:
            parts += ["", f"## Many edges: {title}, rows {count}, columns {algorithm}"
                          f"{' (' + where + ')' if where else ''}{over}", "",
                      pivot_table(some, count, algorithm, figure, show)]
    return parts


def _is_compression_sweep(keys: Sequence[str]) -> bool:
    return bool(pareto.compression_keys(keys))


def build_report(runs: Sequence[Run]) -> str:
    """The markdown report: what was run, when, and what every run shares; the runs table, the seed
    groups where runs repeat with other seeds, then a pivot, the backends layout or the compression
    ranking where they apply."""
    keys, groups = setting_keys(runs), group_runs(runs)
    parts = [f"# edgesplit report: {len(runs)} run(s)", "", *header_lines(runs), "", "## Runs", "",
             runs_table(runs, swept_keys(runs))]
    replaced = [f"{r.name} replaces {', '.join(r.replaced)}" for r in runs if r.replaced]
    if replaced:
        parts += ["", f"Only the newest run per override set of a sweep is kept: {'; '.join(replaced)} "
                      f"(the same overrides, started earlier)."]
    seeds = any(len(g.runs) > 1 for g in groups)
    over = ", mean ± std over seeds (n)" if seeds else ""
    if seeds:
        parts += ["", "## Over seeds: mean ± std (n)", "", seeds_table(groups, keys)]
    if len(runs) > 1 and len(keys) == 2:
        parts += ["", f"## best_val_acc1 (%): rows {keys[0]}, columns {keys[1]}{over}", "",
                  pivot_table(runs, keys[0], keys[1])]
    parts += clients_tables(runs, keys, over)
    if len(runs) > 1 and len(keys) == 1 and keys[0] in BACKEND_KEYS:
        parts += ["", f"## Pipeline backends{over}", "", backends_table(runs, keys[0])]
    if _is_compression_sweep(keys):
        ckeys = pareto.compression_keys(keys)
        parts += ["", f"## Compression methods ranked by best_val_acc1{over}", "",
                  pareto.ranking_table(pareto.points(groups, keys), [k for k in keys if k not in ckeys])]
    parts += privacy.section(groups, keys, over) or []
    return "\n".join(parts) + "\n"


def _series(runs: Sequence[Run]) -> list[Series]:
    """Per seed group its label and its runs' histories; a group of one run is labelled as before."""
    keys = setting_keys(runs)
    return [(run_label(g.runs[0], swept_keys(runs)) if len(g.runs) == 1 else g.label(keys),
             [r.history for r in g.runs]) for g in group_runs(runs)]


def _encoding(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], str]:
    """Per seed group its colour (the first swept key's value) and line style (the second's), and
    the title's note of which key is which."""
    keys = setting_keys(runs)[:2]
    values = [[g.overrides.get(k) for k in keys] + [None] * (2 - len(keys)) for g in group_runs(runs)]
    styles = encode([(v[0], v[1]) for v in values])
    note = ", ".join(f"{what}: {k}" for what, k in zip(("colour", "line style"), keys))
    return styles, f" ({note})" if note else ""


def plot_curves(runs: Sequence[Run]) -> Figure:
    """Validation acc1 per epoch: a line per run, or per seed group the mean and a ± std band."""
    styles, note = _encoding(runs)
    return plot_validation(_series(runs), styles, "validation accuracy" + note)


def plot_loss(runs: Sequence[Run]) -> Figure:
    """Train loss per epoch, drawn as plot_curves draws accuracy."""
    styles, note = _encoding(runs)
    return plot_train_loss(_series(runs), styles, "training loss" + note)


def plot_accuracy_vs_bytes(runs: Sequence[Run]) -> Figure:
    keys = setting_keys(runs)
    return pareto.plot_pareto(pareto.points(group_runs(runs), keys))


def figures(runs: Sequence[Run]) -> dict[str, Callable[[Sequence[Run]], Figure]]:
    """The PNGs of a report by file name; pareto.png only for a sweep that varies the compression,
    privacy.png only where a run measured leakage."""
    pngs: dict[str, Callable[[Sequence[Run]], Figure]] = {"curves.png": plot_curves, "loss.png": plot_loss}
    if _is_compression_sweep(setting_keys(runs)):
        pngs["pareto.png"] = plot_accuracy_vs_bytes
    if privacy.measured(runs):
        pngs["privacy.png"] = lambda rs: privacy.plot_privacy(group_runs(rs), setting_keys(rs))
    if clients.swept(setting_keys(runs)):
        pngs["clients.png"] = lambda rs: clients.plot_clients(group_runs(rs), setting_keys(rs))
    return pngs


_ALT = {"curves.png": "validation accuracy", "loss.png": "train loss", "pareto.png": "accuracy vs bytes",
        "privacy.png": "accuracy vs leakage", "clients.png": "accuracy vs bytes per client"}


def write_report(runs: Sequence[Run], out_dir: Path) -> str:
    """Write report.md and the PNGs (curves.png, loss.png, pareto.png, privacy.png, clients.png) into
    out_dir; return the markdown."""
    text, pngs = build_report(runs), figures(runs)
    links = "".join(f"\n![{_ALT[name]}]({name})\n" for name in pngs)
    (out_dir / "report.md").write_text(text + links)
    for name, plot in pngs.items():
        save_png(plot(runs), out_dir / name)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgesplit.report",
        description="Tables (markdown; runs that differ only in seed as mean ± std (n)) and curves of "
                    "edgesplit runs; writes report.md, curves.png, loss.png and, for a sweep of "
                    "compressors, pareto.png into the first DIR.")
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a Hydra multirun dir, an outputs dir, or run dirs")
    args = parser.parse_args(argv)
    out_dir = Path(args.dirs[0]).expanduser().resolve()
    try:
        runs = find_runs(args.dirs)
        text = write_report(runs, out_dir)
    except (ReportError, OSError) as exc:
        why = exc if isinstance(exc, ReportError) else (
            f"cannot write report.md and its PNGs into {out_dir}: {exc.strerror or exc}")
        print(f"edgesplit.report: {why}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    print(f"\nwrote {', '.join(['report.md', *figures(runs)])} into {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
