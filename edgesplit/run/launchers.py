"""Sweep jobs run by Hydra's launchers in other processes (joblib, submitit): threads, failures, Ctrl-C."""
import json
import logging
import os
import signal
import shutil
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Iterator, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)

# Set by the launching process for the length of a sweep; its job processes inherit them.
STATE_ENV = "EDGESPLIT_SWEEP_STATE"  # a dir in the sweep dir: failed jobs, running job pids, Ctrl-C
LAUNCHER_PID_ENV = "EDGESPLIT_SWEEP_PID"
INTERRUPTED = "interrupted"
# launchers whose jobs run as processes of this machine: Ctrl-C is handed to them, not killed
LOCAL_PROCESS_LAUNCHERS = ("joblib", "submitit_local")
IGNORE_SIGINT = "trap '' INT"
_failed_here: List[List[str]] = []  # failures of jobs run where no state dir is set (a single run)
_previous_sigint: Any = None
_sigint_seen = False


def launcher_kind(launcher: Any) -> str:
    """basic, joblib, submitit_local, submitit_slurm or other, from `hydra.launcher._target_`."""
    target = str((launcher or {}).get("_target_", ""))
    for suffix, kind in (("BasicLauncher", "basic"), ("JoblibLauncher", "joblib"),
                         ("submitit_launcher.LocalLauncher", "submitit_local"),
                         ("submitit_launcher.SlurmLauncher", "submitit_slurm")):
        if target.endswith(suffix):
            return kind
    return "other"


def job_threads(launcher: Any, cpus: int) -> Optional[int]:
    """Torch threads for one job of a sweep whose `threads` is null: an equal share of the `cpus`
    among joblib's n_jobs, submitit's cpus_per_task (a local job without it: 1; a SLURM job: the
    CPUs it was given); None (torch's default) for the basic launcher, whose jobs run one by one."""
    kind = launcher_kind(launcher)
    if kind == "joblib":
        n = launcher.get("n_jobs")
        n = 1 if n is None else int(n)
        parallel = n if n > 0 else max(1, cpus + 1 + n)  # joblib: -1 = every CPU, -2 = all but one
        return max(1, cpus // parallel)
    if kind in ("submitit_local", "submitit_slurm"):
        per_task = launcher.get("cpus_per_task")
        if per_task:
            return int(per_task)
        return 1 if kind == "submitit_local" else max(1, cpus)
    return None


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ------------------------------------------------------------------------------ job side
def _state() -> Optional[Path]:
    value = os.environ.get(STATE_ENV)
    return Path(value) if value else None


def in_job_process() -> bool:
    """True in a job that a launcher runs in a process other than the one that started the sweep."""
    launcher_pid = os.environ.get(LAUNCHER_PID_ENV)
    return _state() is not None and launcher_pid is not None and launcher_pid != str(os.getpid())


def _write(name: str, data: str) -> None:
    state = _state()
    if state is None:
        return
    try:
        (state / name).write_text(data)
    except OSError as e:  # a job host that does not see the sweep dir: the sweep goes on without it
        log.warning(f"cannot write {state / name}: {e}")


def record_failure(overrides: List[str], error: str, job_num: int = 0) -> None:
    """A job that ended with a UserError: the launching process exits 1 after the sweep."""
    if _state() is None:
        _failed_here.append(overrides)
        return
    _write(f"failed-{job_num}-{uuid.uuid4().hex[:8]}.json",
           json.dumps({"num": job_num, "overrides": overrides, "error": error}))


def record_interrupt() -> None:
    """Ctrl-C reached a job: no other job starts, the launching process exits 130."""
    _write(INTERRUPTED, "")


def sweep_interrupted() -> bool:
    state = _state()
    return state is not None and (state / INTERRUPTED).exists()


def _mark_interrupted(signum: int, frame: Optional[FrameType]) -> None:
    record_interrupt()


@contextmanager
def job_process() -> Iterator[None]:
    """Around a job: in a launcher's job process, its pid is listed for the launching process to
    hand Ctrl-C to, and a Ctrl-C that comes between two jobs of a reused worker stops the sweep
    (the next job does not start) instead of killing the worker."""
    state = _state()
    if state is None or not in_job_process() or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, _mark_interrupted)  # the trainer's own handler takes over inside a run
    pid_file = state / f"job-{os.getpid()}"
    _write(pid_file.name, "")
    try:
        yield
    finally:
        pid_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------- launching side
def _job_pids(state: Path) -> List[int]:
    return [int(p.name.split("-", 1)[1]) for p in state.glob("job-*") if p.name.split("-", 1)[1].isdigit()]


def _hand_on_sigint(signum: int, frame: Optional[FrameType]) -> None:
    """Ctrl-C in the launching process: the running jobs stop at their next step boundary (each
    writes its summary as interrupted) and no other starts; a second Ctrl-C kills them."""
    global _sigint_seen
    state = _state()
    if state is None:
        raise KeyboardInterrupt
    pids = _job_pids(state)
    for pid in pids:  # a job's second SIGINT stops it at once
        try:
            os.kill(pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass
    if _sigint_seen:
        raise KeyboardInterrupt
    _sigint_seen = True
    record_interrupt()
    log.warning(f"Ctrl-C: {len(pids)} running job(s) stop at their next step boundary and no other "
                "starts; Ctrl-C again stops them at once")


class SweepJobs(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): opens the sweep's state dir, whose path
    the job processes inherit, and hands Ctrl-C to jobs that run as local processes."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _previous_sigint, _sigint_seen
        state = Path(str(config.hydra.sweep.dir)) / f".edgesplit-sweep-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        state.mkdir(parents=True, exist_ok=True)
        os.environ[STATE_ENV], os.environ[LAUNCHER_PID_ENV] = str(state.resolve()), str(os.getpid())
        launcher = config.hydra.launcher
        kind = launcher_kind(launcher)
        if kind in LOCAL_PROCESS_LAUNCHERS and threading.current_thread() is threading.main_thread():
            _sigint_seen = False
            _previous_sigint = signal.signal(signal.SIGINT, _hand_on_sigint)
        if kind == "submitit_local":
            _controllers_ignore_sigint(launcher)
        if kind == "submitit_local" and not launcher.get("gpus_per_node"):
            import torch

            if torch.cuda.is_available():
                log.warning("submitit_local hides the GPUs from its jobs (CUDA_VISIBLE_DEVICES is empty): "
                            "they train on the CPU; hydra.launcher.gpus_per_node=1 gives each job GPU 0")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _restore_sigint()


def _controllers_ignore_sigint(launcher: DictConfig) -> None:
    """submitit_local starts a controller process per job, which on Ctrl-C would kill its job a
    second later, before it has written its summary: the controllers start with SIGINT ignored
    (a shell `trap` in submitit's `setup`), the jobs install their own handler."""
    with read_write(launcher), open_dict(launcher):
        setup = list(launcher.get("setup") or [])
        if IGNORE_SIGINT not in setup:
            launcher.setup = [IGNORE_SIGINT, *setup]


def _restore_sigint() -> None:
    global _previous_sigint
    if _previous_sigint is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _previous_sigint)
    _previous_sigint = None


@dataclass
class Outcome:
    """What the jobs of this process's sweep (or its single run) left: failures, Ctrl-C."""
    failed: List[List[str]] = field(default_factory=list)
    interrupted: bool = False
    sweep_dir: Optional[Path] = None


def collect() -> Outcome:
    """In the launching process after the sweep: the failed jobs (by job number) and whether Ctrl-C
    stopped it; the state dir is removed and the environment restored."""
    _restore_sigint()
    outcome = Outcome(failed=list(_failed_here))
    _failed_here.clear()
    state = _state()
    if state is None or os.environ.get(LAUNCHER_PID_ENV) != str(os.getpid()):
        return outcome
    os.environ.pop(STATE_ENV, None)
    os.environ.pop(LAUNCHER_PID_ENV, None)
    records = []
    for path in state.glob("failed-*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    outcome.failed += [r["overrides"] for r in sorted(records, key=lambda r: int(r.get("num", 0)))]
    outcome.interrupted = (state / INTERRUPTED).exists()
    outcome.sweep_dir = state.parent
    shutil.rmtree(state, ignore_errors=True)
    return outcome
