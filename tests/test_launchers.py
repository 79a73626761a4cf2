"""Sweeps through Hydra's parallel launchers: joblib and submitit_local run jobs as processes."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hydra import compose, initialize_config_dir

from edgesplit.run import launchers
from edgesplit.config import register_configs
from tests.test_studies import (REPO, RUN_FILES, TINY, _env, _jobs, _report, _summary, _table, _train,
                                _train_cmd)

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
SUBMITIT_SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
# joblib's jobs also log to MLflow (where installed): two processes open one new SQLite store at once
LAUNCHERS = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        *(["logger=mlflow"] * HAVE_MLFLOW)],
             "submitit_local": ["hydra/launcher=submitit_local"]}
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


# ------------------------------------------------------------------------------- fast checks
@pytest.mark.parametrize("launcher, cpus, threads", [
    ({"_target_": JOBLIB, "n_jobs": 3}, 16, 5),
    ({"_target_": JOBLIB, "n_jobs": 2}, 2, 1),
    ({"_target_": JOBLIB, "n_jobs": 4}, 2, 1),  # never 0
    ({"_target_": JOBLIB, "n_jobs": -1}, 16, 1),  # joblib's default: a job per CPU
    ({"_target_": JOBLIB, "n_jobs": -2}, 16, 1),  # all CPUs but one: 15 jobs
    ({"_target_": JOBLIB, "n_jobs": -9}, 16, 2),  # 8 jobs
    ({"_target_": SUBMITIT_LOCAL, "cpus_per_task": None}, 16, 1),  # every job at once
    ({"_target_": SUBMITIT_LOCAL, "cpus_per_task": 4}, 16, 4),
    ({"_target_": SUBMITIT_SLURM, "cpus_per_task": 8}, 64, 8),
    ({"_target_": SUBMITIT_SLURM, "cpus_per_task": None}, 6, 6),  # what SLURM gave the job
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 16, None),
])
def test_a_parallel_job_takes_its_share_of_the_cpus(
        launcher: Dict[str, Any], cpus: int, threads: Any) -> None:
    assert launchers.job_threads(launcher, cpus) == threads


def _config(*overrides: str) -> Any:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def _hydra_cfg(*overrides: str) -> Any:
    return _config(*overrides).hydra


def test_launcher_options_compose_and_the_callback_is_configured() -> None:
    assert launchers.launcher_kind(_hydra_cfg().launcher) == "basic"
    joblib = _hydra_cfg("hydra/launcher=joblib", "hydra.launcher.n_jobs=3")
    assert launchers.launcher_kind(joblib.launcher) == "joblib" and joblib.launcher.n_jobs == 3
    local = _hydra_cfg("hydra/launcher=submitit_local").launcher
    assert launchers.launcher_kind(local) == "submitit_local"
    slurm = _hydra_cfg("hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu").launcher
    assert launchers.launcher_kind(slurm) == "submitit_slurm"  # our preset extends submitit_slurm
    assert (slurm.gpus_per_node, slurm.cpus_per_task, slurm.partition) == (1, 8, "gpu")
    assert slurm.max_num_timeout == 3 and slurm.timeout_min >= 60
    assert joblib.callbacks.sweep_jobs._target_ == "edgesplit.run.launchers.SweepJobs"


def test_failures_and_ctrl_c_of_job_processes_reach_the_launching_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config("hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path}")
    before = signal.getsignal(signal.SIGINT)
    launchers.SweepJobs().on_multirun_start(cfg)
    assert signal.getsignal(signal.SIGINT) is launchers._hand_on_sigint  # Ctrl-C goes to the jobs
    try:
        state = Path(os.environ[launchers.STATE_ENV])
        assert state.parent == tmp_path and state.name.startswith(".")  # hidden from the report
        assert not launchers.in_job_process()  # the launching process itself
        monkeypatch.setenv(launchers.LAUNCHER_PID_ENV, "1")  # as seen from a job process
        assert launchers.in_job_process() and not launchers.sweep_interrupted()
        launchers.record_failure(["partition.front=30"], "bad", job_num=3)
        launchers.record_failure(["partition.front=20"], "bad", job_num=1)
        launchers.record_interrupt()
        assert launchers.sweep_interrupted()
    finally:
        monkeypatch.setenv(launchers.LAUNCHER_PID_ENV, str(os.getpid()))
        launchers.SweepJobs().on_multirun_end(cfg)
        outcome = launchers.collect()
    assert outcome.failed == [["partition.front=20"], ["partition.front=30"]]  # by job number
    assert outcome.interrupted and outcome.sweep_dir == tmp_path.resolve()
    assert list(tmp_path.iterdir()) == [] and launchers.STATE_ENV not in os.environ
    assert signal.getsignal(signal.SIGINT) is before  # the handler restored


# -------------------------------------------------------------------------------- end to end
def _times(job: Path) -> tuple[datetime, datetime]:
    """The first and last timestamps of a job's train.log."""
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
              for line in (job / "train.log").read_text().splitlines() if (m := STAMP.match(line))]
    return stamps[0], stamps[-1]


def _job_overrides(job: Path) -> List[str]:
    overrides = _summary(job)["overrides"]
    assert isinstance(overrides, list)
    return overrides


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The same 2-job sweep (seed=1,2; one torch thread per job) through each parallel launcher."""
    out = {}
    for name, args in LAUNCHERS.items():
        sweep = tmp_path_factory.mktemp(name) / "sweep"
        out[name] = sweep, _train("-m", *TINY, "seed=1,2", *args, f"hydra.sweep.dir={sweep}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_parallel_sweep_runs_each_job_in_its_own_dir_with_its_seed(
        sweeps: Dict[str, tuple[Path, subprocess.CompletedProcess]], name: str) -> None:
    sweep, out = sweeps[name]
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = _jobs(sweep)
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1"]
    for seed, job in zip((1, 2), jobs):
        for f in RUN_FILES:
            assert (job / f).exists(), f"{job} lacks {f}"
        assert not (job / "run.lock").exists()
        s = _summary(job)
        assert s["status"] == "finished" and s["epochs"] == 1
        assert f"seed={seed}" in _job_overrides(job) and f"seed={seed}" in job.name
        assert not any(o.startswith("hydra") for o in _job_overrides(job))
    (a_start, a_end), (b_start, b_end) = (_times(j) for j in jobs)
    assert a_start < b_end and b_start < a_end  # the two jobs ran at the same time
    assert not list(sweep.glob(".edgesplit-sweep-*"))  # the launching process cleaned up
    if name == "submitit_local":
        assert (sweep / ".submitit").is_dir()  # submitit's own files, beside the jobs
    if "logger=mlflow" in LAUNCHERS[name]:  # both jobs in the sweep's one store
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
        found = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert sorted(r.data.params["seed"] for r in found) == ["1", "2"]
        assert {r.info.status for r in found} == {"FINISHED"}
    report = _report(sweep).stdout
    runs = _table(report, "## Runs")
    assert runs[0][:3] == ["run", "seed", "status"]
    assert [r[:3] for r in runs[1:]] == [["0", "1", "finished"], ["1", "2", "finished"]]
    for row, job in zip(runs[1:], jobs):
        assert row[runs[0].index("best val acc1")] == f"{_summary(job)['best_val_acc1']:.2f}"


@pytest.mark.slow
def test_a_job_computes_the_same_in_either_launcher_and_each_seed_its_own(
        sweeps: Dict[str, tuple[Path, subprocess.CompletedProcess]]) -> None:
    losses = {name: [_summary(j)["train_loss"] for j in _jobs(sweep)] for name, (sweep, _) in sweeps.items()}
    assert losses["joblib"] == losses["submitit_local"]  # one thread each: bit for bit
    assert losses["joblib"][0] != losses["joblib"][1]


@pytest.mark.slow
def test_a_failed_job_in_a_job_process_fails_the_sweep(tmp_path: Path) -> None:
    # n_jobs=2: a job in a worker process (joblib runs n_jobs=1 in the launching process)
    out = _train("-m", *TINY, "partition.front=30", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}")
    console = out.stdout + out.stderr
    assert out.returncode == 1, console[-3000:]
    assert "error: partition.front+partition.back=31 is invalid" in console
    assert "1 job(s) failed" in console and "Traceback" not in console


def _wait_for(proc: subprocess.Popen, until: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert proc.poll() is None, f"the sweep ended (rc {proc.returncode}) before Ctrl-C"
        assert time.monotonic() < deadline, "the sweep did not get to the point of Ctrl-C"
        time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_stops_the_running_jobs_cleanly_and_starts_no_other(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    tiny = [a for a in TINY if not a.startswith(("threads=", "schedule.epochs="))]
    args = ["-m", *tiny, "schedule.epochs=4", "partition.front=1,2,3", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    log = tmp_path / "console.txt"
    with open(log, "w") as console:
        proc = subprocess.Popen(_train_cmd(*args), cwd=REPO, env=_env(), stdout=console,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(proc, lambda: len(list(sweep.glob("*/checkpoint.pt"))) == 2, timeout=300)
            os.kill(proc.pid, signal.SIGINT)  # the launching process only: it hands Ctrl-C on
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text()
    assert "Ctrl-C: 2 running job(s) stop at their next step boundary" in text
    assert f"the sweep was interrupted; to continue, run the sweep again with resume=true " \
           f"hydra.sweep.dir={sweep}" in text
    first, second, third = _jobs(sweep)
    for job in (first, second):
        s = _summary(job)
        assert s["status"] == "interrupted" and 1 <= s["epochs"] < 4, s["status"]
        assert (job / "checkpoint.pt").exists() and not (job / "run.lock").exists()
        threads = launchers.job_threads({"_target_": JOBLIB, "n_jobs": 2}, launchers.available_cpus())
        assert f"threads={threads} torch threads for this job (joblib" in (job / "train.log").read_text()
    assert not (third / "summary.json").exists()  # queued when Ctrl-C came: never started
    assert "not started: the sweep was interrupted" in (third / "train.log").read_text()
    assert not list(sweep.glob(".edgesplit-sweep-*"))
    assert json.loads((first / "summary.json").read_text())["error"].startswith("interrupted in epoch")
