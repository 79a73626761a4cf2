"""The run dir lock: a live holder refuses a second run, a dead one's lock is taken over."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from omegaconf import DictConfig

from edgesplit.run import trainer
from edgesplit.errors import RunDirBusy, UserError
from edgesplit.run.rundir import FOREIGN_STALE_S, RunDirLock
from tests.conftest import ROOT, TEST_MODEL, TINY


@pytest.fixture
def make_cfg(make_cfg: Callable[..., DictConfig]) -> Callable[..., DictConfig]:
    """The tiny config on the 5-unit test model: these tests are about the run's plumbing."""
    return lambda *overrides: make_cfg(*TEST_MODEL, *overrides)


def _plant(run_dir: Path, host: str, pid: int, age_s: float = 0.0) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.lock"
    path.write_text(json.dumps({"host": host, "pid": pid, "started": "2026-01-01T00:00:00+00:00"}))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def test_a_live_run_holds_its_dir(make_cfg: Callable, tmp_path: Path) -> None:
    with RunDirLock(tmp_path):
        holder = json.loads((tmp_path / "run.lock").read_text())
        assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
        with pytest.raises(RunDirBusy) as info:
            trainer.run(make_cfg("pipeline_backend=naive"), tmp_path, [])
    message = str(info.value)
    assert message.startswith(f"{tmp_path} is in use by a live run (host {socket.gethostname()} "
                              f"pid {os.getpid()} started {holder['started']})")
    assert not (tmp_path / "summary.json").exists()  # the holder's files are untouched
    assert not (tmp_path / "run.lock").exists()  # released


def test_a_second_train_py_in_a_held_dir_is_one_line(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from edgesplit.run.rundir import "
         "RunDirLock\nwith RunDirLock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(120)",
         str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, *TEST_MODEL,
                               f"hydra.run.dir={tmp_path}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out
    (line,) = [line for line in out.splitlines() if "ERROR" in line]
    assert f"error: {tmp_path} is in use by a live run (host {socket.gethostname()} pid {holder.pid}" in line


def test_a_dead_holders_lock_on_this_host_is_taken_over(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    pid = _dead_pid()
    _plant(tmp_path, socket.gethostname(), pid)
    with caplog.at_level("WARNING"), RunDirLock(tmp_path):
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock {tmp_path / 'run.lock'} of a run that ended without releasing it " \
           f"(host {socket.gethostname()} pid {pid}" in caplog.text
    assert not (tmp_path / "run.lock").exists()


def test_another_hosts_lock_is_refused_until_it_is_old(tmp_path: Path) -> None:
    path = _plant(tmp_path, "elsewhere", 4242, age_s=60)
    with pytest.raises(RunDirBusy) as info:
        with RunDirLock(tmp_path):
            pass
    assert str(info.value).startswith(f"{path} is held by a run on another host (host elsewhere pid 4242")
    assert f"if that run is gone, delete {path}" in str(info.value)
    assert json.loads(path.read_text())["host"] == "elsewhere"  # left as it was
    _plant(tmp_path, "elsewhere", 4242, age_s=FOREIGN_STALE_S + 60)
    with RunDirLock(tmp_path):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_the_lock_is_released_on_failure_and_jobs_of_one_process_take_it_in_turn(
        make_cfg: Callable, tmp_path: Path) -> None:
    for error in (UserError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with RunDirLock(tmp_path):
                raise error
        assert not (tmp_path / "run.lock").exists()
    for _ in range(2):  # as a Hydra multirun: one job after another, each its own lock
        with RunDirLock(tmp_path) as lock:
            lock.refresh()
    with pytest.raises(UserError):  # a run that fails releases its dir too
        trainer.run(make_cfg("pipeline_backend=naive", "data.batch_size=100000",
                             "pipeline_backend.chunks=1"), tmp_path, [])
    assert not (tmp_path / "run.lock").exists()
