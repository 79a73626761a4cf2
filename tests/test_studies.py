"""The seed's three studies as presets: composition, shrunk sweeps end to end, report, resume."""
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from edgesplit.config import register_configs
from edgesplit.report.curves import run_label
from edgesplit.report.build import find_runs, plot_curves, swept_keys

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# The tiniest run that still takes real training steps: 4 steps of 64 digits, 1 epoch.
TINY = ["data=digits", "data.train_size=256", "data.val_size=128", "model.width=0.125",
        "schedule.epochs=1", "schedule.warmup_epochs=1", "data.batch_size=64",
        "pipeline_backend.chunks=2", "threads=1"]
RUN_FILES = (".hydra", "tb", "summary.json", "checkpoint.pt")


# ----------------------------------------------------------------------------------- helpers
def _compose(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def _sweep_params(cfg: DictConfig) -> dict[str, list[str]]:
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert isinstance(params, dict)
    return {str(k): str(v).split(",") for k, v in params.items()}


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _train(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(_train_cmd(*args), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _report(sweep: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "edgesplit.report", str(sweep)], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()),
                  key=lambda p: int(p.name.split("_", 1)[0]))


def _overrides(job: Path) -> dict[str, str]:
    items = (job / ".hydra" / "overrides.yaml").read_text().split("\n")
    pairs = [i[2:].split("=", 1) for i in items if i.startswith("- ") and "=" in i]
    return {k: v for k, v in pairs}


def _summary(job: Path) -> dict[str, Any]:
    data = json.loads((job / "summary.json").read_text())
    assert isinstance(data, dict)
    return data


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after the heading that starts with `heading`."""
    lines = markdown.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
        elif rows:
            break
    return [rows[0]] + rows[2:]  # header, then body (without the |---| line)


def _check_sweep(sweep: Path, n_jobs: int) -> list[Path]:
    jobs = _jobs(sweep)
    assert len(jobs) == n_jobs
    for job in jobs:
        for name in RUN_FILES:
            assert (job / name).exists(), f"{job} lacks {name}"
        s = _summary(job)
        assert s["status"] == "finished"
        assert math.isfinite(s["train_loss"]) and 0 <= s["best_val_acc1"] <= 100
        assert s["comm"]["up_bytes_per_batch"] > 0 and s["comm"]["down_bytes_per_batch"] > 0
    return jobs


def _check_pivot(sweep: Path, row_key: str, col_key: str, rows: list[str], cols: list[str]) -> None:
    """report.md's pivot has rows x cols and each cell is its job's best_val_acc1 as `%.2f`."""
    text = (sweep / "report.md").read_text()
    table = _table(text, "## best_val_acc1")
    assert table[0] == [f"{row_key} \\ {col_key}", *cols]
    assert [r[0] for r in table[1:]] == rows
    by_cell = {}
    for job in _jobs(sweep):
        ov = _overrides(job)
        by_cell[ov[row_key], ov[col_key]] = f"{_summary(job)['best_val_acc1']:.2f}"
    assert len(by_cell) == len(rows) * len(cols)
    for line in table[1:]:
        for col, cell in zip(cols, line[1:]):
            assert cell == by_cell[line[0], col]


def _check_curves(sweep: Path, n_jobs: int) -> None:
    assert (sweep / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = find_runs([sweep])
    keys = swept_keys(runs)
    labels = [line.get_label() for line in plot_curves(runs).axes[0].get_lines()]  # what curves.png shows
    assert labels == [run_label(r, keys) for r in runs]
    assert len(labels) == n_jobs


def _hparams(job: Path) -> tuple[dict[str, Any], list[str]]:
    """The hparams of the run's HParams entry and the metric tags of an experiment it writes (none:
    TensorBoard builds the experiment from every run's session, see test_sweep_figures.py)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(job / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    hparams: dict[str, Any] = {}
    metrics: list[str] = []
    for raw in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                hparams[key] = getattr(value, value.WhichOneof("kind"))
        if data.HasField("experiment"):
            metrics += [m.name.tag for m in data.experiment.metric_infos]
    return hparams, metrics


def _last_scalar(job: Path, tag: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(job / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return float(acc.Scalars(tag)[-1].value)


# ----------------------------------------------------------------------------------- presets
def test_edge_grid_preset_is_the_seeds_first_study() -> None:
    cfg = _compose("experiment=edge_grid")
    assert _sweep_params(cfg) == {"partition.front": ["1", "2", "3"],
                                  "partition.back": ["1", "2", "3"]}
    assert cfg.compressor.name == "prune" and cfg.compressor.ratio == 0.1
    assert (cfg.schedule.lr, cfg.schedule.epochs, cfg.schedule.warmup_epochs) == (0.4, 200, 20)
    assert (cfg.data.name, cfg.data.batch_size, cfg.pipeline_backend.name,
            cfg.pipeline_backend.chunks) == ("cifar10", 1024, "gpipe", 4)


def test_quant_lr_preset_sweeps_named_choices() -> None:
    cfg = _compose("experiment=quant_lr")
    params = _sweep_params(cfg)
    assert params == {"compressor": ["none", "quantize8", "quantize4"],
                      "schedule.lr": ["0.4", "0.2", "0.1"]}
    assert len(list(itertools.product(*params.values()))) == 9  # no duplicates, no failures
    expected = {"none": ("none", None), "quantize8": ("quantize8", 8),
                "quantize4": ("quantize4", 4)}
    for choice, (name, bits) in expected.items():
        c = _compose("experiment=quant_lr", f"compressor={choice}").compressor
        assert (c.name, c.get("bits")) == (name, bits)
        if bits is not None:  # the quantize option reused: same codecs, same schema
            assert c.activation._target_ == "edgesplit.codecs.Quantize"
            assert c.activation.bits == bits and c.gradient.bits == bits
    with pytest.raises(ConfigCompositionException):  # still validated by schema_quantize
        _compose("compressor=quantize4", "compressor.bits=four")
    assert _compose("compressor=quantize4", "compressor.bits=3").compressor.bits == 3


def test_backends_preset_and_command_line_wins() -> None:
    cfg = _compose("experiment=backends")
    assert _sweep_params(cfg) == {"pipeline_backend": ["naive", "gpipe", "dist"]}
    assert cfg.compressor.name == "none" and cfg.schedule.epochs == 100
    # ordinary overrides shrink a preset, also of groups the preset overrides itself
    cfg = _compose("experiment=backends", "compressor=prune", "data=digits", "schedule.epochs=2")
    assert (cfg.compressor.name, cfg.data.name, cfg.schedule.epochs) == ("prune", "digits", 2)
    cfg = _compose("data=digits", "experiment=edge_grid", "model.width=0.25")
    assert (cfg.data.name, cfg.model.width) == ("digits", 0.25)


# ------------------------------------------------------------------------------ end to end
def test_shrunk_edge_grid_sweep_report_curves_hparams(tmp_path: Path) -> None:
    sweep = tmp_path / "edge_grid"
    out = _train("-m", "experiment=edge_grid", *TINY, "partition.front=1,2",
                 "partition.back=1,3", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = _check_sweep(sweep, 4)
    report = _report(sweep)
    assert report.stdout == (sweep / "report.md").read_text().split("\n![")[0]
    _check_pivot(sweep, "partition.front", "partition.back", ["1", "2"], ["1", "3"])
    runs = _table(report.stdout, "## Runs")
    assert runs[0][:3] == ["run", "partition.front", "partition.back"]
    assert {"up/batch", "down/batch", "compression"} <= set(runs[0])
    assert all(r[3] == "finished" and r[-1].endswith("x") for r in runs[1:])
    _check_curves(sweep, 4)
    for job in jobs:  # TensorBoard's HParams view: swept keys and the final metrics
        hparams, metrics = _hparams(job)
        ov = _overrides(job)
        assert hparams["partition.front"] == float(ov["partition.front"])
        assert hparams["partition.back"] == float(ov["partition.back"])
        assert hparams["data.name"] == "digits" and hparams["compressor.name"] == "prune"
        assert metrics == []  # no experiment per run: it would mark every key as not differing
        s = _summary(job)
        assert _last_scalar(job, "val/acc1") == pytest.approx(s["val_acc1"], rel=1e-5)
        assert _last_scalar(job, "val/best_acc1") == pytest.approx(s["best_val_acc1"], rel=1e-5)


def test_shrunk_quant_lr_sweep_pivot_rows_choices_columns_lr(tmp_path: Path) -> None:
    sweep = tmp_path / "quant_lr"
    out = _train("-m", "experiment=quant_lr", *TINY, "schedule.lr=0.2,0.05",
                 f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = _check_sweep(sweep, 6)
    _report(sweep)
    _check_pivot(sweep, "compressor", "schedule.lr", ["none", "quantize8", "quantize4"],
                 ["0.05", "0.2"])
    _check_curves(sweep, 6)
    ratio = {_overrides(j)["compressor"]: _summary(j)["comm"]["compression_ratio"] for j in jobs}
    assert ratio["none"] == pytest.approx(1.0, abs=0.01)
    assert 1.0 < ratio["quantize8"] < ratio["quantize4"]
    for job in jobs:
        hparams, _ = _hparams(job)
        ov = _overrides(job)
        assert hparams["schedule.lr"] == pytest.approx(float(ov["schedule.lr"]))
        assert hparams["compressor.name"] == ov["compressor"]  # the named choice


def test_sweep_with_an_invalid_job_runs_the_valid_one_and_fails(tmp_path: Path) -> None:
    sweep = tmp_path / "bad"
    out = _train("-m", "experiment=edge_grid", *TINY, "partition.front=1,30", "partition.back=1",
                 f"hydra.sweep.dir={sweep}")
    assert out.returncode == 1
    console = out.stdout + out.stderr  # Hydra logs to stdout
    assert "Traceback" not in console
    assert re.search(r"error: partition\.front\+partition\.back=31 is invalid", console)
    assert "1 job(s) failed" in console
    good, bad = _jobs(sweep)
    assert _summary(good)["status"] == "finished"
    assert not (bad / "summary.json").exists()
    runs = _table(_report(sweep).stdout, "## Runs")
    assert runs[1][:2] == ["0", "1"] and runs[1][2] == "finished"
    assert runs[2][:2] == ["1", "30"] and runs[2][2].startswith("failed: partition.front")


def _wait(proc: subprocess.Popen, until: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before it could be interrupted")
        if time.monotonic() > deadline:
            pytest.fail("the sweep did not reach the point to interrupt it")
        time.sleep(0.05)


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def test_interrupted_sweep_continues_with_resume(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=edge_grid", *TINY, "schedule.epochs=3", "partition.front=1,2",
            "partition.back=1", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(_train_cmd(*args), cwd=REPO, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def job(n: int) -> Optional[Path]:
            found = list(sweep.glob(f"{n}_*")) if sweep.is_dir() else []
            return found[0] if found else None

        def second_job_mid_way() -> bool:
            j = job(1)
            s = _read_json(j / "summary.json") if j else None
            return bool(j and s and (j / "checkpoint.pt").exists() and s["epochs"] < 3)

        _wait(proc, second_job_mid_way, timeout=300)
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first, second = _jobs(sweep)
    assert _summary(first)["status"] == "finished"
    done = _summary(second)["epochs"]
    assert _summary(second)["status"] == "running" and 1 <= done < 3
    stamps = {p: p.stat().st_mtime_ns for p in (first / "summary.json", first / "checkpoint.pt")}

    out = _train(*args, "resume=true")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _jobs(sweep) == [first, second]  # the same subdirs: resume is not in their names
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # job 0 was not retrained
    assert "nothing to resume" in (first / "train.log").read_text()
    assert f"after epoch {done}" in (second / "train.log").read_text()
    resumed = _summary(second)
    assert resumed["status"] == "finished" and resumed["epochs"] == 3
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]

    # the resumed job's numbers are an uninterrupted run's (same seed, one thread)
    ref_dir = tmp_path / "reference"
    out = _train(*[a for a in args[1:] if not a.startswith(("partition.front", "hydra."))],
                 "partition.front=2", f"hydra.run.dir={ref_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    reference = _summary(ref_dir)
    for key in ("train_loss", "val_loss", "val_acc1", "best_val_acc1"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-9), key
    for got, want in zip(resumed["history"], reference["history"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert got["lr"] == pytest.approx(want["lr"])
    # the report of the continued sweep: both finished, `resume` is not a swept key
    text = _report(sweep).stdout
    assert "resume" not in _table(text, "## Runs")[0]
    assert re.search(r"\| 1 \| 2 \| finished \| 3 \|", text)


def test_shrunk_backends_sweep_has_the_seeds_layout(tmp_path: Path) -> None:
    sweep = tmp_path / "backends"
    # each backend's own chunks (naive has no micro-batches and refuses any other than 1)
    tiny = [a for a in TINY if not a.startswith("pipeline_backend.chunks=")]
    out = _train("-m", "experiment=backends", *tiny, f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = _check_sweep(sweep, 3)
    table = _table(_report(sweep).stdout, "## Pipeline backends")
    assert table[0] == ["", "naive", "gpipe", "dist"]
    assert [r[0] for r in table[1:]] == ["Val_acc1%", "Time per batch (s)", "Memory (peak)"]
    for job, col in zip(jobs, (1, 2, 3)):
        s = _summary(job)
        assert s["backend"] == table[0][col]
        assert s["comm"]["compression_ratio"] == pytest.approx(1.0, abs=0.01)  # header only
        assert table[1][col] == f"{s['best_val_acc1']:.2f}"
        assert table[2][col] == f"{s['time_per_batch_s']:.3f}"
    # gpipe and dist run the same micro-batches through the same codecs: the same training
    gpipe, dist = (_summary(j) for j in jobs[1:])
    assert dist["train_loss"] == pytest.approx(gpipe["train_loss"], rel=1e-4)


def test_compression_preset_sweeps_nine_methods_two_lrs_three_seeds() -> None:
    params = _sweep_params(_compose("experiment=compression"))
    assert params["schedule.lr"] == ["0.4", "0.1"] and params["seed"] == ["0", "1", "2"]
    assert len(params["compressor"]) == len(set(params["compressor"])) == 9
    for choice in params["compressor"]:  # each composes, and each named choice is its own name
        assert _compose("experiment=compression", f"compressor={choice}").compressor.name == choice


def test_a_sweep_over_seeds_reports_mean_std_n_and_ranks_the_methods(tmp_path: Path) -> None:
    """3 seeds x 2 methods through the real train.py: the pivot and the ranking show each method
    as mean ± std (n=3) of its seeds' own figures, and pareto.png is drawn."""
    sweep = tmp_path / "seeds"
    out = _train("-m", *TINY, "compressor=none,quantize2_sr_group", "seed=0,1,2",
                 f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = _check_sweep(sweep, 6)
    _report(sweep)
    text = (sweep / "report.md").read_text()
    best: dict[str, list[float]] = {}
    for job in jobs:
        best.setdefault(_overrides(job)["compressor"], []).append(_summary(job)["best_val_acc1"])
    ranking = {row[1]: row for row in _table(text, "## Compression methods ranked")[1:]}
    for method, values in best.items():
        mean = sum(values) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
        assert f"{mean:.2f} ± {std:.2f} (n=3)" in ranking[method][3]
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
