"""Tests of edgesplit.report.build over seeds: mean ± std (n) in every table, bands, loss.png, pareto.png."""
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from edgesplit.report import pareto, build as report
from edgesplit.boundary.meter import CommFigures, CommMeter
from edgesplit.report.build import build_report, find_runs, main, write_report
from edgesplit.logs.summary import RunSummary
from edgesplit.report.runs import group_runs
from edgesplit.report.tables import stat_cell
from tests.test_report import PNG_SIGNATURE, _cli, _run_dir, _summary, _table

MB = 1_000_000
# (compressor, lr) -> best val acc1 of seeds 0, 1, 2 (None: the job failed before summary.json)
BEST: dict[tuple[str, str], list[Optional[float]]] = {
    ("none", "0.1"): [97.0, 98.0, 99.0], ("none", "0.4"): [96.0, 52.0, 98.0],
    ("quantize8", "0.1"): [96.0, 97.0, 98.0], ("quantize8", "0.4"): [85.0, 88.0, 91.0],
    ("quantize4", "0.1"): [96.5, 97.5, 98.5], ("quantize4", "0.4"): [60.0, 40.0, None],
}
PAYLOAD = {"none": 4 * MB, "quantize8": MB, "quantize4": MB // 2}  # each way, per batch; raw 4 MB


def _comm(each_way: int) -> CommFigures:
    meter = CommMeter()
    meter.record("front", "forward", each_way, 4 * MB)
    meter.record("back", "forward", each_way, 4 * MB)
    meter.end_batch()
    return meter.summary()


def _seed_summary(comp: str, lr: str, seed: int, best: float) -> RunSummary:
    """Seed s trains with loss 0.2 + 0.1 s; (none, 0.1) seed 2 is still running after 2 of 3
    epochs; (quantize4, 0.4) seed 1 diverged in epoch 3."""
    done = 2 if (comp, lr, seed) in {("none", "0.1", 2), ("quantize4", "0.4", 1)} else 3
    summary = _summary(best, done=done, comm=_comm(PAYLOAD[comp]))
    for h in summary.history:
        h.train_loss = 0.2 + 0.1 * seed
    if (comp, lr, seed) == ("quantize4", "0.4", 1):
        summary.fail("training diverged: loss is nan at epoch 3")
    return summary


@pytest.fixture
def seed_sweep(tmp_path: Path) -> Path:
    """`compressor=none,quantize8,quantize4 schedule.lr=0.1,0.4 seed=0,1,2`: 18 jobs."""
    root = tmp_path / "sweep"
    job = 0
    for (comp, lr), seeds in BEST.items():
        for seed, best in enumerate(seeds):
            ov = [f"compressor={comp}", f"schedule.lr={lr}", f"seed={seed}"]
            run = _run_dir(root / f"{job}_{','.join(ov)}", ov,
                           None if best is None else _seed_summary(comp, lr, seed, best))
            if best is None:
                (run / "train.log").write_text("[2024-01-01 12:00:00,000][edgesplit][ERROR] - error: "
                                               "out of memory\n")
            job += 1
    return root


def test_pivot_shows_mean_std_and_n_over_seeds(seed_sweep: Path) -> None:
    text = build_report(find_runs([seed_sweep]))
    assert "## best_val_acc1 (%): rows compressor, columns schedule.lr, mean ± std over seeds (n)" in text
    assert _table(text, "## best_val_acc1") == [
        ["compressor \\ schedule.lr", "0.1", "0.4"],
        ["none", "98.00 ± 1.00 (n=3; 1 running)", "82.00 ± 26.00 (n=3)"],
        ["quantize8", "97.00 ± 1.00 (n=3)", "88.00 ± 3.00 (n=3)"],
        ["quantize4", "97.50 ± 1.00 (n=3)", "50.00 ± 14.14 (n=2; 2 failed)"],
    ]


def test_runs_table_keeps_every_seed(seed_sweep: Path) -> None:
    table = _table(build_report(find_runs([seed_sweep])), "## Runs")
    assert table[0][:5] == ["run", "compressor", "schedule.lr", "seed", "status"]
    rows = {(r[1], r[2], r[3]): r for r in table[1:]}
    assert len(rows) == 18
    assert [rows["none", "0.4", s][6] for s in "012"] == ["96.00", "52.00", "98.00"]
    assert rows["quantize4", "0.4", "1"][4] == "failed: training diverged: loss is nan at epoch 3"
    assert rows["quantize4", "0.4", "2"][4] == "failed: out of memory"
    assert rows["none", "0.1", "2"][4] == "running 2/3"


def test_seeds_table_gives_every_metric_as_mean_std_n(seed_sweep: Path) -> None:
    table = _table(build_report(find_runs([seed_sweep])), "## Over seeds")
    header, rows = table[0], {(r[0], r[1]): dict(zip(table[0], r)) for r in table[1:]}
    assert header == ["compressor", "schedule.lr", "seeds", "runs", "best val acc1", "final val acc1",
                      "time/batch (s)", "samples/s", "peak memory", "up/batch", "down/batch",
                      "compression"]
    assert len(rows) == 6
    none = rows["none", "0.1"]
    assert none["seeds"] == "0, 1, 2" and none["runs"] == "2 finished, 1 running"
    assert none["best val acc1"] == "98.00 ± 1.00 (n=3)"
    # final: 96.5 and 97.5 (best - 0.5 after 3 epochs), 99.0 (the running seed's epoch 2)
    assert none["final val acc1"] == "97.67 ± 1.26 (n=3)"
    assert none["time/batch (s)"] == "0.120 ± 0.000 (n=3)" and none["samples/s"] == "1067 ± 0 (n=3)"
    assert none["up/batch"] == "4 MB ± 0 B (n=3)" and none["compression"] == "1.00x ± 0.00x (n=3)"
    q4 = rows["quantize4", "0.4"]
    assert q4["runs"] == "1 finished, 2 failed" and q4["best val acc1"] == "50.00 ± 14.14 (n=2)"
    assert q4["up/batch"] == "500 kB ± 0 B (n=2)" and q4["compression"] == "8.00x ± 0.00x (n=2)"


def test_ranking_per_lr_with_bytes_and_ratio_vs_none(seed_sweep: Path) -> None:
    assert _table(build_report(find_runs([seed_sweep])), "## Compression methods ranked") == [
        ["schedule.lr", "rank", "method", "runs", "best val acc1 (%)", "bytes/batch (up+down)",
         "vs none", "vs fp32"],
        ["0.1", "1", "none", "2 finished, 1 running", "98.00 ± 1.00 (n=3)", "8 MB ± 0 B (n=3)",
         "1.00x", "1.00x ± 0.00x (n=3)"],
        ["0.1", "2", "quantize4", "3 finished", "97.50 ± 1.00 (n=3)", "1 MB ± 0 B (n=3)",
         "8.00x", "8.00x ± 0.00x (n=3)"],
        ["0.1", "3", "quantize8", "3 finished", "97.00 ± 1.00 (n=3)", "2 MB ± 0 B (n=3)",
         "4.00x", "4.00x ± 0.00x (n=3)"],
        ["0.4", "1", "quantize8", "3 finished", "88.00 ± 3.00 (n=3)", "2 MB ± 0 B (n=3)",
         "4.00x", "4.00x ± 0.00x (n=3)"],
        ["0.4", "2", "none", "3 finished", "82.00 ± 26.00 (n=3)", "8 MB ± 0 B (n=3)",
         "1.00x", "1.00x ± 0.00x (n=3)"],
        ["0.4", "3", "quantize4", "1 finished, 2 failed", "50.00 ± 14.14 (n=2)", "1 MB ± 0 B (n=2)",
         "8.00x", "8.00x ± 0.00x (n=2)"],
    ]


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """The Figures write_report saves, by file name (the PNGs are written too)."""
    figures: dict[str, Figure] = {}
    real_save = report.save_png

    def save_and_keep(fig: Figure, path: Path) -> None:
        figures[path.name] = fig
        real_save(fig, path)

    monkeypatch.setattr(report, "save_png", save_and_keep)
    return figures


def _ys(coll: PolyCollection) -> list[float]:
    return sorted({round(float(y), 4) for path in coll.get_paths() for y in path.vertices[:, 1]})


def test_curves_draw_mean_and_band_per_seed_group(seed_sweep: Path, saved: dict[str, Figure]) -> None:
    write_report(find_runs([seed_sweep]), seed_sweep)
    assert set(saved) == {"curves.png", "loss.png", "pareto.png"}
    for name in saved:
        assert (seed_sweep / name).read_bytes().startswith(PNG_SIGNATURE)
    ax = saved["curves.png"].axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines][:2] == [
        "compressor=none, schedule.lr=0.1 (mean of 3)", "compressor=none, schedule.lr=0.4 (mean of 3)"]
    assert len(lines) == 6 and len(ax.collections) == 6  # a band per group
    # seeds' val acc1 per epoch: 95.5 97 96.5 | 96.5 98 97.5 | 97.5 99 (still running)
    assert np.asarray(lines[0].get_ydata()).tolist() == pytest.approx([96.5, 98.0, 97.0])
    band = ax.collections[0]
    assert isinstance(band, PolyCollection)
    assert tuple(band.get_facecolor()[0][:3]) == pytest.approx(to_rgb(lines[0].get_color()))
    half = round(math.sqrt(0.5), 4)  # epoch 3: two seeds, 96.5 and 97.5
    assert _ys(band) == sorted([95.5, 97.5, 97.0, 99.0, round(97.0 - half, 4), round(97.0 + half, 4)])
    # colour: the compressor, line style: the lr
    assert ax.get_title() == "validation accuracy (colour: compressor, line style: schedule.lr)"
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert lines[0].get_linestyle() == lines[2].get_linestyle() != lines[1].get_linestyle()
    assert ax.get_ylabel() == "val acc1 (%), mean ± std over seeds"
    loss = saved["loss.png"].axes[0]
    assert loss.get_ylabel() == "train loss, mean ± std over seeds" and len(loss.collections) == 6
    # the groups whose three seeds all finished have the same mean loss: the later lines say so and
    # ring their points (the first group has a running seed, the last a failed one)
    same = "compressor=none, schedule.lr=0.4 (mean of 3)"
    labels = [line.get_label() for line in loss.get_lines()]
    assert labels[1] == same and labels[2:5] == [
        f"{label} (identical to {same})" for label in [line.get_label() for line in lines][2:5]]
    assert "identical" not in labels[0] + labels[5]
    assert [line.get_marker() for line in loss.get_lines()][1:4] == [".", "o", "o"]
    assert loss.get_lines()[3].get_markersize() > loss.get_lines()[2].get_markersize()  # each ring shows
    assert np.asarray(loss.get_lines()[0].get_ydata()).tolist() == pytest.approx([0.3, 0.3, 0.25])
    # epochs 1-2: 0.3 ± 0.1 (seeds 0.2, 0.3, 0.4); epoch 3: 0.25 ± 0.0707 (the running seed has none)
    assert _ys(loss.collections[0]) == [0.1793, 0.2, 0.3207, 0.4]


def test_a_single_run_stays_a_line(tmp_path: Path, saved: dict[str, Figure]) -> None:
    for seed in range(3):
        _run_dir(tmp_path / f"{seed}", ["schedule.lr=0.1", f"seed={seed}"], _summary(90.0 + seed))
    _run_dir(tmp_path / "3", ["schedule.lr=0.2"], _summary(80.0))  # the default seed alone
    runs = find_runs([tmp_path])
    assert [len(g.runs) for g in group_runs(runs)] == [3, 1]
    write_report(runs, tmp_path)
    assert set(saved) == {"curves.png", "loss.png"}  # the compression is not swept
    ax = saved["curves.png"].axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [
        "schedule.lr=0.1 (mean of 3)", "schedule.lr=0.2, seed=(default)"]
    assert len(ax.collections) == 1  # the band of the 3 seeds only
    assert np.asarray(ax.get_lines()[1].get_ydata()).tolist() == [78.5, 80.0, 79.5]
    assert _table(build_report(runs), "## Over seeds")[1:] == [
        ["0.1", "0, 1, 2", "3 finished", "91.00 ± 1.00 (n=3)", "90.50 ± 1.00 (n=3)", "0.120 ± 0.000 (n=3)",
         "1067 ± 0 (n=3)", "123 MB ± 0 B (n=3)", "1 MB ± 0 B (n=3)", "200 kB ± 0 B (n=3)",
         "9.50x ± 0.00x (n=3)"],
        ["0.2", "(default)", "1 finished", "80.00", "79.50", "0.120", "1067", "123 MB", "1 MB",
         "200 kB", "9.50x"]]


def test_pareto_png_accuracy_vs_bytes(seed_sweep: Path, saved: dict[str, Figure]) -> None:
    write_report(find_runs([seed_sweep]), seed_sweep)
    ax = saved["pareto.png"].axes[0]
    assert ax.get_xscale() == "log" and "bytes per batch" in ax.get_xlabel()
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    by_label = {c.get_label(): c for c in bars}
    assert set(by_label) == {"methods (schedule.lr=0.1)", "none (uncompressed) (schedule.lr=0.1)",
                             "methods (schedule.lr=0.4)", "none (uncompressed) (schedule.lr=0.4)"}
    methods = by_label["methods (schedule.lr=0.4)"]
    marker, _, (yerr,) = methods.lines
    assert np.asarray(marker.get_xdata()).tolist() == [2 * MB, MB]  # quantize8, quantize4
    assert np.asarray(marker.get_ydata()).tolist() == pytest.approx([88.0, 50.0])
    # error bars: mean ± sample std (3.00 and 14.14)
    spans = sorted(float(seg[1, 1] - seg[0, 1]) for seg in yerr.get_segments())
    assert spans == pytest.approx([6.0, 2 * math.sqrt(200)])
    none = by_label["none (uncompressed) (schedule.lr=0.4)"].lines[0]
    assert none.get_marker() == "*" and marker.get_marker() == "o"
    assert np.asarray(none.get_xdata()).tolist() == [8 * MB] and none.get_ydata()[0] == pytest.approx(82.0)
    other_lr = by_label["methods (schedule.lr=0.1)"].lines[0]
    assert none.get_color() == marker.get_color() != other_lr.get_color()  # one colour per lr
    frontiers = {line.get_label(): np.asarray(line.get_xdata()).tolist() for line in ax.get_lines()
                 if str(line.get_label()).startswith("Pareto frontier")}
    # lr 0.1: quantize4 1 MB 97.5, quantize8 2 MB 97.0 (dominated), none 8 MB 98.0
    assert frontiers == {"Pareto frontier (schedule.lr=0.1)": [MB, 8 * MB],
                         "Pareto frontier (schedule.lr=0.4)": [MB, 2 * MB]}
    assert sorted(t.get_text() for t in ax.texts) == sorted(["none", "quantize8", "quantize4"] * 2)


def test_frontier_keeps_the_points_nothing_beats() -> None:
    def point(method: str, nbytes: float, acc: float) -> pareto.Point:
        return pareto.Point((), "", method, False, [], pareto.stat([acc]), pareto.stat([nbytes]))

    pts = [point("a", 10, 90), point("b", 5, 80), point("c", 5, 85), point("d", 20, 89),
           point("e", 40, 95), point("f", 40, 91)]
    assert [p.method for p in pareto.frontier(pts)] == ["c", "a", "e"]


def test_method_label_names_swept_settings() -> None:
    ckeys = ["compressor", "compressor.bits"]
    assert pareto.method_label({"compressor": "quantize", "compressor.bits": "4"}, ckeys) == "quantize bits=4"
    assert pareto.method_label({"compressor": "none"}, ckeys) == "none"  # none has no bits
    assert pareto.method_label({"compressor.ratio": "0.05"}, ["compressor.ratio"]) == "ratio=0.05"


def test_cells_for_one_and_no_figure(tmp_path: Path) -> None:
    for seed in range(3):
        _run_dir(tmp_path / f"{seed}", [f"seed={seed}"], _summary(90.0) if seed == 0 else None)
        (tmp_path / f"{seed}" / "train.log").write_text(
            "" if seed == 0 else "[x][edgesplit][ERROR] - error: out of memory\n")
    runs = find_runs([tmp_path])
    best = report.BEST
    assert stat_cell(runs, best) == "90.00 ± — (n=1; 2 failed)"
    assert stat_cell(runs[1:], best) == "— (n=0; 2 failed)"
    assert stat_cell(runs, best, notes=False) == "90.00 ± — (n=1)"


def test_backends_table_over_seeds(tmp_path: Path) -> None:
    job = 0
    for backend, accs, times in [("gpipe", (92.0, 94.0), (1.0, 1.2)), ("naive", (93.0,), (2.5,))]:
        for seed, (acc, t) in enumerate(zip(accs, times)):
            _run_dir(tmp_path / str(job), [f"pipeline_backend={backend}", f"seed={seed}"],
                     _summary(acc, backend=backend, time_per_batch_s=t, peak_memory_bytes=int(9e9)))
            job += 1
    assert _table(build_report(find_runs([tmp_path])), "## Pipeline backends") == [
        ["", "gpipe", "naive"],
        ["Val_acc1%", "93.00 ± 1.41 (n=2)", "93.00"],
        ["Time per batch (s)", "1.100 ± 0.141 (n=2)", "2.500"],
        ["Memory (peak)", "9 GB ± 0 B (n=2)", "9 GB"],
    ]


def test_cli_on_a_seed_sweep(seed_sweep: Path) -> None:
    proc = _cli(str(seed_sweep))
    assert proc.returncode == 0, proc.stderr
    assert "| quantize8 | 97.00 ± 1.00 (n=3) | 88.00 ± 3.00 (n=3) |" in proc.stdout
    assert f"wrote report.md, curves.png, loss.png, pareto.png into {seed_sweep}" in proc.stderr
    md = (seed_sweep / "report.md").read_text()
    assert md.startswith(proc.stdout) and "![accuracy vs bytes](pareto.png)" in md
    assert main([str(seed_sweep)]) == 0


def test_bytes_per_batch_are_the_whole_run_average(tmp_path: Path) -> None:
    """delta sends 8-bit first visits in epoch 1, then small changes: its bytes in the ranking
    and the Pareto plot are the run's average over its epochs, not the last epoch's."""
    summary = _summary(90.0, done=3, comm=_comm(MB // 4))  # the last epoch: a quarter MB each way
    for h, each_way in zip(summary.history, (MB, MB // 4, MB // 4)):
        h.up_bytes_per_batch = h.down_bytes_per_batch = each_way
    run = find_runs([_run_dir(tmp_path / "0_compressor=delta2", ["compressor=delta2"], summary)])[0]
    assert pareto.payload_bytes(run) == pytest.approx(2 * (MB + MB // 2) / 3)
    assert pareto.raw_ratio(run) == pytest.approx(8 * MB / (2 * (MB + MB // 2) / 3))


def test_vs_fp32_of_a_bottleneck_counts_the_models_tensor_before_the_encoder(tmp_path: Path) -> None:
    """bottleneck4 sends half the channels at 4 bits: 1/16 of what an uncompressed split sends
    (the model's tensor in fp32), not 1/8 (the encoder's half-size tensor in fp32)."""
    import torch

    from edgesplit.model.bottleneck import Bottleneck, boundary_channels
    from edgesplit.boundary.boundary import Boundary
    from edgesplit.codecs.build import build_codecs
    from edgesplit.config import compose_config

    c = compose_config(["compressor=bottleneck4"]).compressor
    # as the assembly records it: the model's tensors at the boundaries
    bottleneck = Bottleneck(c.channel_ratio, ((8, 32, 32), (16, 4, 4)))
    codecs, meter = build_codecs(c), CommMeter()
    for name, shape in zip(("front", "back"), bottleneck.shapes):
        channels = boundary_channels(bottleneck, name)
        assert channels == (shape[0], shape[0] // 2)
        boundary = Boundary(name, codecs[name], meter, channels=channels)
        boundary.new_step()
        boundary.send("forward", torch.randn(64, shape[0] // 2, *shape[1:]))  # the encoder's output
    meter.end_batch()
    comm = meter.summary()
    model_fp32 = 64 * 4 * (8 * 32 * 32 + 16 * 4 * 4)  # bytes: the model's tensors, fp32
    assert comm.raw_fp32_up_bytes_per_batch + comm.raw_fp32_down_bytes_per_batch == model_fp32
    assert comm.raw_up_bytes_per_batch + comm.raw_down_bytes_per_batch == model_fp32 // 2  # as sent
    run = find_runs([_run_dir(tmp_path / "0_compressor=bottleneck4", ["compressor=bottleneck4"],
                              _summary(90.0, comm=comm))])[0]
    assert pareto.raw_ratio(run) == pytest.approx(model_fp32 / pareto.payload_bytes(run))
    assert 15 < pareto.raw_ratio(run) <= 16  # headers aside
    assert boundary_channels(None, "front") == (1, 1)  # no bottleneck: the tensor itself crosses
