"""metrics.csv in every run dir, and logger=mlflow read back through MLflow's own client."""
import csv
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import yaml
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from edgesplit.run import trainer
from edgesplit.errors import ConfigError
from edgesplit.logs.metrics_csv import COLUMNS
from edgesplit.config import compose_config
from tests.conftest import TEST_MODEL
from tests.trained_run import RESUMED, TrainedRun, copy_run


@pytest.fixture
def make_cfg(make_cfg: Callable[..., DictConfig]) -> Callable[..., DictConfig]:
    """The tiny config on the 5-unit test model: these tests are about the run's plumbing."""
    return lambda *overrides: make_cfg(*TEST_MODEL, *overrides)


needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="the mlflow extra is not installed here (pip install -e '.[test,mlflow]', as CI does)")


def _csv(run_dir: Path) -> List[Dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_metrics_csv_has_one_row_per_epoch_and_survives_a_resume(trained_run: TrainedRun,
                                                                 tmp_path: Path) -> None:
    # the shared run was killed after epoch 1's summary.json, before its metrics.csv row
    assert "summary.json" in trained_run.killed_files and "metrics.csv" not in trained_run.killed_files
    summary = trained_run.resumed_summary
    rows = _csv(trained_run.resumed)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, h in zip(rows, summary["history"]):
        for key in ("lr", "train_loss", "val_acc1", "time_per_batch_s", "samples_per_s",
                    "up_bytes_per_batch"):
            assert float(row[key]) == pytest.approx(h[key], rel=1e-9), key
        assert int(row["peak_memory_bytes"]) == h["peak_memory_bytes"] > 0
    assert [float(r["best_val_acc1"]) for r in rows] == pytest.approx(
        [max(h["val_acc1"] for h in summary["history"][:i + 1]) for i in range(3)])
    run_dir = copy_run(trained_run.resumed, tmp_path)
    trainer.run(compose_config(RESUMED), run_dir, [])  # finished: nothing to resume, nothing added
    assert len(_csv(run_dir)) == 3


def test_logger_mlflow_without_the_package_stops_with_one_line(
        make_cfg: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"logger=mlflow needs the mlflow package.*\.\[mlflow\]"):
        trainer.run(make_cfg("logger=mlflow"), tmp_path, [])
    assert not (tmp_path / "tb").exists() and not (tmp_path / "summary.json").exists()  # before anything


def _mlflow_runs(store: Path) -> List[Any]:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments])


@needs_mlflow
def test_mlflow_holds_the_runs_params_and_metrics_and_a_resume_goes_on_in_the_same_run(
        trained_run: TrainedRun, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    run_dir, summary = trained_run.resumed, trained_run.resumed_summary  # killed after epoch 1, resumed
    runs = _mlflow_runs(run_dir / "mlflow.db")  # a single run's store: in its run dir
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    params = run.data.params
    assert params["seed"] == "3" and params["partition.front"] == "1" and params["logger.name"] == "mlflow"
    assert params["compressor.name"] == "quantize2_sr_group" and params["data.name"] == "digits"
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    # metric names are TensorBoard's tags
    for tag, key in (("val/acc1", "val_acc1"), ("train/loss", "train_loss"),
                     ("comm/up_bytes", "up_bytes_per_batch")):
        history = sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], tag  # epoch 1 logged once, by the resumed run
        assert [m.value for m in history] == pytest.approx([h[key] for h in summary["history"]]), tag
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert set(run.data.metrics) <= set(events.Tags()["scalars"]) and "val/best_acc1" in run.data.metrics
    # the config and summary.json as the run ended, as artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "summary.json"}
    got = Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert json.loads(got.read_text()) == summary and summary["status"] == "finished"
    config = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
    assert config["seed"] == 3 and config["compressor"]["name"] == "quantize2_sr_group"


def test_mlflow_params_leave_out_the_secret_and_the_tracking_uri(make_cfg: Callable) -> None:
    from edgesplit.logs.logbook import public_config
    from edgesplit.logs.mlflow_log import flat_params
    cfg = make_cfg("pipeline_backend=dist", "pipeline_backend.secret=0123456789abcdef0123",
                   "logger=mlflow", "logger.tracking_uri=http://user:pw@host:5000")
    params = flat_params(public_config(cfg))
    assert params["pipeline_backend.timeout_s"] == "60.0" and params["logger.name"] == "mlflow"
    assert not any("0123456789abcdef" in v or "user:pw" in v for v in params.values())


@needs_mlflow
@pytest.mark.slow
def test_in_dist_only_the_edge_logs_to_mlflow(make_cfg: Callable, tmp_path: Path) -> None:
    cfg = make_cfg("pipeline_backend=dist", "pipeline_backend.chunks=2", "schedule.epochs=1", "logger=mlflow")
    summary = trainer.run(cfg, tmp_path, [])
    runs = _mlflow_runs(tmp_path / "mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["pipeline_backend.name"] == "dist"
    assert runs[0].data.metrics["val/acc1"] == pytest.approx(summary["val_acc1"])
    assert "pipeline_backend.secret" not in runs[0].data.params
