"""The seed's three studies as presets (composed, as Hydra composes them) and the suite's one
end-to-end sweep (tests/sweeps.py): its jobs, failed jobs, report, curves and HParams."""
import itertools
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from edgesplit.config import register_configs
from edgesplit.report.build import find_runs
from tests.sweeps import REPO, RUN_FILES, TINY as TINY_SWEEP, Sweep, jobs, overrides, summary, table

PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------- helpers
def _compose(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def _sweep_params(cfg: DictConfig) -> dict[str, list[str]]:
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert isinstance(params, dict)
    return {str(k): str(v).split(",") for k, v in params.items()}


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


def test_compression_preset_sweeps_twelve_methods_two_lrs_three_seeds() -> None:
    params = _sweep_params(_compose("experiment=compression"))
    assert params["schedule.lr"] == ["0.4", "0.1"] and params["seed"] == ["0", "1", "2"]
    assert len(params["compressor"]) == len(set(params["compressor"])) == 12
    for choice in params["compressor"]:  # each composes, and each named choice is its own name
        assert _compose("experiment=compression", f"compressor={choice}").compressor.name == choice


def test_resume_is_left_out_of_a_jobs_dir_name() -> None:
    """A sweep continued with resume=true finds its jobs' dirs: they are named without it."""
    cfg = _compose("experiment=edge_grid")
    subdir = OmegaConf.to_container(cfg.hydra.sweep)["subdir"]  # type: ignore[index]
    assert subdir == "${edgesplit.job_name:${hydra.job.num}}"
    assert "resume" in cfg.hydra.job.config.override_dirname.exclude_keys


GROUPS = ("compressor", "data", "pipeline_backend")


@pytest.mark.parametrize("swept, names", [
    (["experiment=edge_grid"], ["0_back=1,front=1", "8_back=3,front=3"]),
    (["compressor=none,quantize2_sr_group,quantize4", "schedule.lr=0.4,0.2,0.1"],
     ["0_none,lr=0.4", "8_quantize4,lr=0.1"]),
    (["experiment=edge_grid", "partition.back=2", "seed=1,2,3", "model.width=0.25,0.5,1.0"],
     ["0_width=0.25,front=1,seed=1", "26_width=1.0,front=3,seed=3"]),
])
def test_a_sweeps_job_names_hold_the_number_and_the_swept_keys_only(
        swept: list[str], names: list[str]) -> None:
    """A 3x3 sweep of a study's shape: each job's dir (its MLflow run name), and its TensorBoard run
    (`<dir>/tb`), under 40 characters; the shared keys and the preset's fixed keys left out."""
    from edgesplit.run.naming import job_name, shared_keys
    shared_line = [*TINY_SWEEP, "logger=mlflow", "resume=true"]
    cfg = _compose(*shared_line, *(o for o in swept if "," not in o))  # the sweep's own config
    params = {k: str(v) for k, v in (cfg.hydra.sweeper.get("params") or {}).items()}
    exclude = {*cfg.hydra.job.config.override_dirname.exclude_keys,
               *shared_keys([*shared_line, *swept], params)}
    given = {**{k: v.split(",") for k, v in params.items()},
             **{o.split("=")[0]: o.split("=")[1].split(",") for o in [*shared_line, *swept]}}
    jobs_overrides = [[f"{k}={v}" for k, v in zip(given, values)]
                      for values in itertools.product(*given.values())]
    got = [job_name(n, o, exclude, lambda key: key in GROUPS) for n, o in enumerate(jobs_overrides)]
    assert [got[0], got[-1]] == names and len(set(got)) == len(got)
    assert max(len(f"{name}/tb") for name in got) < 40, got


def test_a_swept_key_keeps_its_full_name_where_two_end_alike() -> None:
    from edgesplit.run.naming import job_name
    name = job_name(4, ["data.root=/a/b", "model.root=x", "seed=2"], {"seed"}, lambda key: False)
    assert name == "4_data.root=_a_b,model.root=x"  # one dir, whatever a value holds


# ------------------------------------------------------------------------------ end to end
def _valid(sweep: Sweep) -> list[Path]:
    return [j for j in jobs(sweep.dir) if overrides(j)["partition.front"] == "2"]


@pytest.mark.slow
def test_the_sweep_runs_the_valid_jobs_and_fails_for_the_invalid_ones(e2e_sweep: Sweep) -> None:
    console = e2e_sweep.out.stdout + e2e_sweep.out.stderr  # Hydra logs to stdout
    assert e2e_sweep.out.returncode == 1, console[-3000:]
    assert "Traceback" not in console
    assert re.search(r"error: partition\.front\+partition\.back=31 is invalid", console)
    assert "4 job(s) failed" in console
    all_jobs = jobs(e2e_sweep.dir)
    assert [overrides(j)["partition.front"] for j in all_jobs] == ["2"] * 4 + ["30"] * 4
    # short names: the job number and the swept keys; the full list in overrides.yaml and the summary
    ran = [overrides(j) for j in all_jobs]
    assert [j.name for j in all_jobs] == [
        f"{n}_{o['compressor']},front={o['partition.front']},seed={o['seed']}" for n, o in enumerate(ran)]
    assert {"data.train_size", "partition.back", "threads"} <= ran[0].keys()
    assert all(len(j.name) < 40 for j in all_jobs)
    for job in all_jobs[4:]:
        assert not (job / "summary.json").exists()
    for job in _valid(e2e_sweep):
        for name in RUN_FILES:
            assert (job / name).exists(), f"{job} lacks {name}"
        s = summary(job)
        assert s["status"] == "finished" and s["epochs"] == 2
        assert s["overrides"] == [f"{k}={v}" for k, v in overrides(job).items()]
        assert math.isfinite(s["train_loss"]) and 0 <= s["best_val_acc1"] <= 100
        assert s["comm"]["up_bytes_per_batch"] > 0 and s["comm"]["down_bytes_per_batch"] > 0
    ratio = {overrides(j)["compressor"]: summary(j)["comm"]["compression_ratio"]
             for j in _valid(e2e_sweep)}
    assert ratio["none"] == pytest.approx(1.0, abs=0.01)
    assert ratio["quantize8"] == pytest.approx(4.0, rel=0.01)


def _mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})"


@pytest.mark.slow
def test_the_report_of_the_sweep_pivots_ranks_and_lists_each_job(e2e_sweep: Sweep) -> None:
    text = e2e_sweep.report
    assert text == (e2e_sweep.dir / "report.md").read_text().split("\n![")[0]
    best: dict[str, list[float]] = {}
    for job in _valid(e2e_sweep):
        best.setdefault(overrides(job)["compressor"], []).append(summary(job)["best_val_acc1"])
    pivot = table(text, "## best_val_acc1")
    assert pivot[0] == ["partition.front \\ compressor", "none", "quantize8"]
    assert pivot[1] == ["2", _mean_std(best["none"]), _mean_std(best["quantize8"])]
    assert pivot[2][0] == "30" and all("2 failed" in cell for cell in pivot[2][1:])
    ranking = {(row[0], row[2]): row for row in table(text, "## Compression methods ranked")[1:]}
    for method, values in best.items():
        assert ranking["2", method][4] == _mean_std(values)
    runs = table(text, "## Runs")
    assert runs[0][:5] == ["run", "partition.front", "compressor", "seed", "status"]
    assert {"up/batch", "down/batch", "compression"} <= set(runs[0])
    for row, job in zip(runs[1:], jobs(e2e_sweep.dir)):
        ov = overrides(job)
        assert row[1:4] == [ov["partition.front"], ov["compressor"], ov["seed"]]
        if ov["partition.front"] == "2":
            assert row[4] == "finished" and row[-1].endswith("x")
            assert row[runs[0].index("best val acc1")] == f"{summary(job)['best_val_acc1']:.2f}"
        else:
            assert row[4].startswith("failed: partition.front+partition.back=31 is invalid")
    for png in ("curves.png", "loss.png", "pareto.png"):
        assert (e2e_sweep.dir / png).read_bytes()[:8] == PNG, png
    assert len(find_runs([e2e_sweep.dir])) == 8


@pytest.mark.slow
def test_each_jobs_tensorboard_holds_its_hparams_and_final_metrics(e2e_sweep: Sweep) -> None:
    for job in _valid(e2e_sweep):  # TensorBoard's HParams view: swept keys and the final metrics
        hparams, metrics = _hparams(job)
        ov = overrides(job)
        assert hparams["partition.front"] == 2.0 and hparams["seed"] == float(ov["seed"])
        assert hparams["data.name"] == "digits" and hparams["compressor.name"] == ov["compressor"]
        assert metrics == []  # no experiment per run: it would mark every key as not differing
        s = summary(job)
        assert _last_scalar(job, "val/acc1") == pytest.approx(s["val_acc1"], rel=1e-5)
        assert _last_scalar(job, "val/best_acc1") == pytest.approx(s["best_val_acc1"], rel=1e-5)
