"""Faults: a killed cloud rank, a frozen edge or an edge that never answers ends every rank after
the timeout, with a one-line message naming the missing rank, no process left and the checkpoint
intact; a peer without the secret is refused and the run goes on. The runs train pooled_units
(seconds an epoch) and the tests wait for events (a checkpoint written, a process gone), with
generous upper bounds only."""
import datetime
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import List

import psutil
import pytest
import torch.distributed as dist

from edgesplit.backends.remote import auth
from edgesplit.errors import PeerError
from edgesplit.run import checkpoint
from tests.dist_helpers import dist_process_count, free_port, train_argv, train_env, wait_for

pytestmark = pytest.mark.slow
TIMEOUT_S = 5  # what the tests about the timeout set: a few seconds


def _dist_children(pid: int) -> List[psutil.Process]:
    """The cloud ranks below `pid` (forked by its zygote, which names them)."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if k.name().startswith("cloud-rank-")]


def _train_until_a_checkpoint(run: Path) -> subprocess.Popen:
    """A local dist run (longer than any test waits) in its own session, once its first checkpoint
    is written."""
    proc = subprocess.Popen(train_argv("data.train_size=256", "data.val_size=64", "schedule.epochs=1000",
                                       f"pipeline_backend.timeout_s={TIMEOUT_S}", f"hydra.run.dir={run}"),
                            env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        wait_for(lambda: (run / "checkpoint.pt").exists(), "the first checkpoint", proc)
    except BaseException:
        _end(proc)
        raise
    return proc


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killed_cloud_rank_mid_run(tmp_path):
    run = tmp_path / "run"
    proc = _train_until_a_checkpoint(run)
    try:
        (cloud,) = _dist_children(proc.pid)
        cloud.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)  # a bound: the edge gives up on its own
    finally:
        _end(proc)
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors and "cloud rank 1" in errors[-1], out[-2000:]
    assert "killed by signal 9" in errors[-1], out[-2000:]
    assert "Traceback" not in out
    state = checkpoint.load(run / "checkpoint.pt")  # intact, the cloud's units in it
    assert state["epoch"] >= 1 and len(state["units"]) == 5 and "cloud_stage1" in state["lr_scheduler"]
    assert sorted(p.name for p in run.glob("*.pt")) == ["checkpoint.pt", "checkpoint_best.pt"]
    assert dist_process_count() == 0


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: the stopped edge cannot reap its exited child."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_frozen_edge_ends_the_cloud_after_the_timeout(tmp_path):
    """SIGSTOP the edge mid-run: its cloud child gives up after timeout_s with a line naming the
    edge and the timeout (its store calls on the way out are short: the store lives in the frozen
    edge)."""
    proc = _train_until_a_checkpoint(tmp_path / "run")
    try:
        (cloud,) = _dist_children(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: not _alive(cloud), "the cloud to give up on the frozen edge", limit_s=120)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=120)
    finally:
        _end(proc)
    lines = [line for line in out.splitlines() if line.startswith("edgesplit: cloud rank 1")]
    assert lines and "lost edge rank 0" in lines[0], out[-2000:]
    assert f"sent nothing for {TIMEOUT_S} s (pipeline_backend.timeout_s)" in lines[0], lines[0]
    assert dist_process_count() == 0


def test_a_cloud_role_whose_edge_never_answers_ends_with_one_line(tmp_path):
    """train.py's role=cloud gives up after timeout_s with one line naming the edge (the edge
    role's and a missing secret's messages, and the lines while waiting: test_dist_startup)."""
    argv = train_argv("pipeline_backend.role=cloud", f"pipeline_backend.master_port={free_port()}",
                      f"pipeline_backend.timeout_s={TIMEOUT_S}", f"hydra.run.dir={tmp_path / 'run'}")
    res = subprocess.run(argv, env=train_env(), capture_output=True, text=True, timeout=180)
    out = res.stdout + res.stderr
    errors = [line for line in out.splitlines() if "error:" in line]
    assert res.returncode != 0 and errors, out[-2000:]
    assert "the edge's store" in errors[-1] and f"within {TIMEOUT_S} s" in errors[-1], out[-2000:]
    assert "Traceback" not in out


def test_wrong_secret_is_refused_and_a_cloud_in_the_edges_run_dir_trains_and_deletes_nothing(tmp_path):
    """Role mode on one host: an intruder without the secret is refused; the real cloud, given the
    edge's hydra.run.dir (what two processes started in the same second get from Hydra's default
    dir), trains the run to its end, the edge's files are all there, and the cloud's Hydra files
    went beside the edge's live dir, not over its record."""
    port, run = free_port(), tmp_path / "run"
    common = ["data.train_size=256", "data.val_size=64", "schedule.epochs=1",
              f"pipeline_backend.master_port={port}", "pipeline_backend.timeout_s=60",
              f"hydra.run.dir={run}"]
    edge = subprocess.Popen(train_argv(*common, "pipeline_backend.role=edge"), env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (run / "train.log").exists(), "the edge's Hydra files", edge)
        store = dist.TCPStore("127.0.0.1", port, None, False, datetime.timedelta(seconds=60))
        with pytest.raises(PeerError, match="refused this cloud process"):
            auth.join(store, "not-the-secret-0123456789", 0, "127.0.0.1", port, 60)
        del store
        cloud = subprocess.run(train_argv(*common, "pipeline_backend.role=cloud"), env=train_env(),
                               capture_output=True, text=True, timeout=240)
        out, _ = edge.communicate(timeout=120)
    finally:
        if edge.poll() is None:
            edge.kill()
            edge.wait()
    assert edge.returncode == 0 and cloud.returncode == 0, out[-2000:] + cloud.stderr[-2000:]
    assert "edgesplit: refused cloud process 127.0.0.1" in out, out[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert "epoch 1/1" in (run / "train.log").read_text()
    assert {p.name for p in run.iterdir()} >= {".hydra", "train.log", "summary.json", "checkpoint.pt", "tb"}
    assert "role=edge" in (run / ".hydra" / "overrides.yaml").read_text()
    beside = [p for p in tmp_path.iterdir() if p.name.startswith("run-cloud-")]
    assert len(beside) == 1 and "role=cloud" in (beside[0] / ".hydra" / "overrides.yaml").read_text()
