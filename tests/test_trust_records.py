"""A run's records never hold the secret, a refused run leaves a live run's dir untouched, and
temporary files of an interrupted write are removed at the next start."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
from omegaconf import OmegaConf

from edgesplit.backends.remote import auth
from edgesplit.config import compose_config
from edgesplit.errors import ConfigError
from edgesplit.run.rundir import RunDirLock
from edgesplit.run.trainer import run
from tests.dist_helpers import REPO, train_env

SECRET = "cli-secret-f00dfeedcafe0123456789"


def _train(*overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"{REPO}/train.py", *(["-m"] if multirun else []),
                           "data=synthetic", *overrides],
                          env=train_env(None), capture_output=True, text=True, timeout=300)


def test_a_secret_on_the_command_line_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = _train("pipeline_backend=dist", f"pipeline_backend.secret={SECRET}",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 1
    assert "error: pipeline_backend.secret on the command line" in out.stderr
    assert "EDGESPLIT_SECRET or pipeline_backend.secret_file" in out.stderr
    assert not (tmp_path / "run").exists()


def test_the_secret_lands_in_no_record(tmp_path: Path) -> None:
    """Given to run() in the config and the overrides (as train.py once passed them): no file of the
    run dir (summary, checkpoint, TensorBoard events, metrics, MLflow's store) holds it."""
    overrides = [f"pipeline_backend.secret={SECRET}", "data=synthetic", "data.train_size=32",
                 "data.val_size=16", "data.batch_size=16", "schedule.epochs=1",
                 "model._target_=tests.dist_helpers.tiny_units",
                 "logger=mlflow", f"logger.tracking_uri=sqlite:///{tmp_path}/run/mlflow.db"]
    cfg = compose_config(["pipeline_backend=dist", "pipeline_backend.chunks=1", *overrides])
    # the naive backend (fast) with the dist config's keys: the records do not depend on the backend
    OmegaConf.update(cfg, "pipeline_backend._target_", "edgesplit.backends.naive.NaiveBackend")
    OmegaConf.update(cfg, "pipeline_backend.name", "naive")
    run(cfg, tmp_path / "run", overrides)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"summary.json", "checkpoint.pt", "mlflow.db"} <= {p.name for p in files}
    assert any("tfevents" in p.name for p in files)
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []


def test_the_secret_may_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    assert auth.resolve_secret(None, False, str(tmp_path / "secret")) == SECRET
    with pytest.raises(ConfigError, match="pipeline_backend.secret_file=.*cannot be read"):
        auth.resolve_secret(None, False, str(tmp_path / "missing"))


def _hashes(run_dir: Path) -> Dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "run.lock"}


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep-job"])
def test_a_refused_second_run_leaves_the_live_runs_dir_untouched(tmp_path: Path, sweep: bool) -> None:
    """A single run in the live run's dir, or a sweep (of one job) whose job dir is the live run's."""
    run_dir = tmp_path / "sweep" / "job0"
    (run_dir / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (run_dir / ".hydra" / name).write_text(f"the live run's {name}\n")
    (run_dir / "train.log").write_text("the live run's log\n")
    before = _hashes(tmp_path)
    where = ([f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=job${hydra.job.num}"] if sweep
             else [f"hydra.run.dir={run_dir}"])
    with RunDirLock(run_dir):  # the live run (this process holds the flock)
        out = _train(*where, "schedule.epochs=1", multirun=sweep)
    assert _hashes(tmp_path) == before  # the sweep's own multirun.yaml is not written either
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"error: {run_dir} is in use by a live run (host " in out.stderr
    assert f"wait for it or pick another {key}" in out.stderr


def test_temporaries_of_interrupted_writes_are_removed_at_the_next_start(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that is gone
    stale = [tmp_path / f"{name}.{dead}.tmp" for name in ("checkpoint.pt", "summary.json", "metrics.csv")]
    kept = [tmp_path / f"checkpoint.pt.{os.getppid()}.tmp",  # a live process's (not this run's lock)
            tmp_path / f"notes.txt.{dead}.tmp", tmp_path / "checkpoint.pt.x.tmp"]  # not edgesplit's
    for path in stale + kept:
        path.write_bytes(b"partial")
    with RunDirLock(tmp_path):
        assert [p for p in stale if p.exists()] == []
        assert all(p.exists() for p in kept)
