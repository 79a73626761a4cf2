"""Helpers of the sweep tests: train.py in a subprocess, a sweep's jobs and files, report tables, and
the one end-to-end sweep (a session fixture) that the study, launcher and figure tests read."""
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
# The tiniest sweep job that still takes real training steps: 4 steps of 64 digits per epoch, on
# the 5-unit test model (tests/custom_model.py: the sweep plumbing is what these tests are about).
TINY = ["data=digits", "data.train_size=256", "data.val_size=128", "data.batch_size=64",
        "model._target_=tests.custom_model.units", "model.width=0.5", "schedule.epochs=2", "threads=1"]
RUN_FILES = (".hydra", "tb", "summary.json", "checkpoint.pt")
# The end-to-end sweep: the edge_grid preset shrunk, 2 methods x 2 seeds, and partition.front=30
# (invalid: its jobs fail at once) in joblib's two job processes, logging to one MLflow store.
E2E_SWEEP = ["experiment=edge_grid", *TINY, "compressor=none,quantize8", "seed=1,2",
             "partition.front=2,30", "partition.back=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
             *(["logger=mlflow"] if HAS_MLFLOW else [])]


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


def env() -> dict[str, str]:
    out = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    out.pop("PYTEST_CURRENT_TEST", None)
    return out


def train(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def report(sweep: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "edgesplit.report", str(sweep)], cwd=REPO,
                         env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()),
                  key=lambda p: int(p.name.split("_", 1)[0]))


def overrides(job: Path) -> dict[str, str]:
    items = (job / ".hydra" / "overrides.yaml").read_text().split("\n")
    pairs = [i[2:].split("=", 1) for i in items if i.startswith("- ") and "=" in i]
    return {k: v for k, v in pairs}


def summary(job: Path) -> dict[str, Any]:
    data = json.loads((job / "summary.json").read_text())
    assert isinstance(data, dict)
    return data


def table(markdown: str, heading: str) -> list[list[str]]:
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


@dataclass
class Sweep:
    """A finished `train.py -m` run: its dir, the process's result, the report CLI's stdout."""
    dir: Path
    out: subprocess.CompletedProcess
    report: str


@pytest.fixture(scope="session")
def e2e_sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The suite's one end-to-end `train.py -m` sweep (E2E_SWEEP), then the report CLI on it."""
    sweep = tmp_path_factory.mktemp("e2e") / "edge_grid"
    out = train("-m", *E2E_SWEEP, f"hydra.sweep.dir={sweep}")
    return Sweep(sweep, out, report(sweep).stdout if sweep.is_dir() else "")
