"""Sweeps through Hydra's parallel launchers: joblib (the end-to-end sweep of tests/sweeps.py) and
submitit_local run jobs as processes; Ctrl-C of a parallel sweep."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hydra import compose, initialize_config_dir

from edgesplit.run import launchers
from edgesplit.config import register_configs
from tests.sweeps import (E2E_SWEEP, REPO, RUN_FILES, TINY, Sweep, env, jobs, overrides, summary, train,
                          train_cmd)

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
SUBMITIT_SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


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
def _job_overrides(job: Path) -> List[str]:
    found = summary(job)["overrides"]
    assert isinstance(found, list)
    return found


def _check_jobs(sweep: Path, seeds: List[int]) -> List[Path]:
    """Each job in its own dir with its seed, its lock released; the launching process cleaned up."""
    ran = [job for job in jobs(sweep) if (job / "summary.json").exists()]
    assert [overrides(j)["seed"] for j in ran] == [str(s) for s in seeds]
    for job in ran:
        for f in RUN_FILES:
            assert (job / f).exists(), f"{job} lacks {f}"
        assert not (job / "run.lock").exists()
        assert summary(job)["status"] == "finished"
        seed = overrides(job)["seed"]
        assert f"seed={seed}" in _job_overrides(job)
        assert f"seed={seed}" in job.name or len(seeds) == 1  # a one-job sweep's dir: its number only
        assert not any(o.startswith("hydra") for o in _job_overrides(job))
    assert not list(sweep.glob(".edgesplit-sweep-*"))
    return ran


@pytest.mark.slow
def test_joblib_runs_each_job_in_its_own_dir_with_its_seed(e2e_sweep: Sweep) -> None:
    assert "hydra/launcher=joblib" in E2E_SWEEP
    _check_jobs(e2e_sweep.dir, [1, 2, 1, 2])


@pytest.mark.slow
def test_submitit_local_runs_a_job_as_a_process_and_computes_as_joblib(
        e2e_sweep: Sweep, tmp_path: Path) -> None:
    """The end-to-end sweep's first job again, through submitit_local (a job process, one thread):
    bit for bit. One job: a second would cost a process start and prove the same."""
    sweep = tmp_path / "sweep"
    dropped = ("compressor=", "partition.front=", "seed=", "hydra", "logger")
    args = [a for a in E2E_SWEEP if not a.startswith(dropped)]
    out = train("-m", *args, "compressor=none", "partition.front=2", "seed=1",
                "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    (ran,) = _check_jobs(sweep, [1])
    assert (sweep / ".submitit").is_dir()  # submitit's own files, beside the job
    by_joblib = [summary(j)["train_loss"] for j in jobs(e2e_sweep.dir)[:2]]
    assert summary(ran)["train_loss"] == by_joblib[0]
    assert by_joblib[0] != by_joblib[1]  # each seed its own: the equality is seed 1's, not any run's


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
    # epochs enough that no job ends before Ctrl-C: it comes once two jobs have a checkpoint
    args = ["-m", *tiny, "schedule.epochs=100", "partition.front=1,2,3", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    log = tmp_path / "console.txt"
    with open(log, "w") as console:
        proc = subprocess.Popen(train_cmd(*args), cwd=REPO, env=env(), stdout=console,
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
    first, second, third = jobs(sweep)
    for job in (first, second):
        s = summary(job)
        assert s["status"] == "interrupted" and 1 <= s["epochs"] < 100, s["status"]
        assert (job / "checkpoint.pt").exists() and not (job / "run.lock").exists()
        threads = launchers.job_threads({"_target_": JOBLIB, "n_jobs": 2}, launchers.available_cpus())
        assert f"threads={threads} torch threads for this job (joblib" in (job / "train.log").read_text()
    assert not (third / "summary.json").exists()  # queued when Ctrl-C came: never started
    assert "not started: the sweep was interrupted" in (third / "train.log").read_text()
    assert not list(sweep.glob(".edgesplit-sweep-*"))
    assert json.loads((first / "summary.json").read_text())["error"].startswith("interrupted in epoch")
