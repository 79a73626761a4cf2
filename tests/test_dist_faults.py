"""Faults: a killed cloud rank, a frozen edge or a peer that never connects ends every rank within
the timeout, with a one-line message naming the missing rank, no process left and the checkpoint
intact; a peer without the secret is refused and the run goes on."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.dist_helpers import dist_process_count, free_port, train_argv, train_env

pytestmark = pytest.mark.slow
TIMEOUT_S = 10


def _dist_children(pid):
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if "edgesplit.backends.remote" in " ".join(k.cmdline())]


def _train_until_a_checkpoint(run):
    """A local dist run of 30 epochs in its own session, once its first checkpoint is written."""
    proc = subprocess.Popen(train_argv("data.train_size=1024", "data.val_size=64",
                                       "schedule.epochs=30", f"hydra.run.dir={run}"),
                            env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no checkpoint after 120 s: {proc.communicate()[0][-2000:]}")
        time.sleep(0.2)
    return proc


def test_killed_cloud_rank_mid_epoch(tmp_path):
    run = tmp_path / "run"
    proc = _train_until_a_checkpoint(run)
    try:
        time.sleep(1.0)  # into the next epoch
        (cloud,) = _dist_children(proc.pid)
        cloud.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=TIMEOUT_S + 30)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert took < TIMEOUT_S + 10, f"the edge took {took:.1f} s to give up"
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors and "cloud rank 1" in errors[-1], out[-2000:]
    assert "killed by signal 9" in errors[-1], out[-2000:]
    assert "Traceback" not in out
    from edgesplit.run import checkpoint
    state = checkpoint.load(run / "checkpoint.pt")  # intact, the cloud's units in it
    assert state["epoch"] >= 1 and len(state["units"]) == 20 and "cloud_stage1" in state["lr_scheduler"]
    assert sorted(p.name for p in run.glob("*.pt")) == ["checkpoint.pt"]
    assert dist_process_count() == 0


@pytest.mark.parametrize("role", ["edge", "cloud"])
def test_peer_that_never_connects(tmp_path, role):
    port = free_port()
    t0 = time.monotonic()
    res = subprocess.run(train_argv(f"pipeline_backend.role={role}",
                                    f"pipeline_backend.master_port={port}",
                                    f"hydra.run.dir={tmp_path / 'run'}"),
                         env=train_env(), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode != 0
    missing = "cloud rank 1" if role == "edge" else "edge"
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors and missing in errors[-1] and "10 s" in errors[-1], out[-2000:]
    assert took < TIMEOUT_S + 30  # python, torch and hydra start in the rest
    assert "Traceback" not in out
    # meanwhile, every 5 s, whom it waits for, how long it has waited and the limit
    whom = (f"cloud rank 1 (stage 1 of 1) at 127.0.0.1:{port}" if role == "edge"
            else f"the edge at 127.0.0.1:{port} to admit a cloud process")
    assert f"waiting for {whom}: 5 s of {TIMEOUT_S:g} s" in out, out[-2000:]


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: the stopped edge cannot reap its exited child."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_frozen_edge_ends_the_cloud_within_the_timeout(tmp_path):
    """SIGSTOP the edge mid-run: its cloud child gives up after timeout_s with a line naming the
    edge (its store calls on the way out are short: the store lives in the frozen edge)."""
    run = tmp_path / "run"
    proc = _train_until_a_checkpoint(run)
    try:
        (cloud,) = _dist_children(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        while _alive(cloud) and time.monotonic() - stopped < TIMEOUT_S + 15:
            time.sleep(0.2)
        took = time.monotonic() - stopped
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=TIMEOUT_S + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert took < TIMEOUT_S + 15, f"the cloud took {took:.1f} s to give up"
    lines = [line for line in out.splitlines() if line.startswith("edgesplit: cloud rank 1")]
    assert lines and "lost edge rank 0" in lines[0], out[-2000:]
    assert dist_process_count() == 0


def test_wrong_secret_is_refused_and_the_real_cloud_trains(tmp_path):
    port = free_port()
    run = tmp_path / "run"
    tiny = ["data.train_size=256", "data.val_size=64", "schedule.epochs=1"]
    edge = subprocess.Popen(train_argv("pipeline_backend.role=edge", f"pipeline_backend.master_port={port}",
                                       "pipeline_backend.timeout_s=60", f"hydra.run.dir={run}", *tiny),
                            env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    intruder = ("import datetime, sys, torch.distributed as dist\n"
                "from edgesplit.backends.remote import auth\n"
                "from edgesplit.errors import PeerError\n"
                "port = int(sys.argv[1])\n"
                "store = dist.TCPStore('127.0.0.1', port, None, False, datetime.timedelta(seconds=60))\n"
                "try:\n"
                "    auth.join(store, 'not-the-secret-0123456789', 0, '127.0.0.1', port, 60)\n"
                "except PeerError as e:\n"
                "    print(e)\n")
    try:
        refused = subprocess.run([sys.executable, "-c", intruder, str(port)], env=train_env(),
                                 capture_output=True, text=True, timeout=90)
        assert "refused this cloud process" in refused.stdout, refused.stdout + refused.stderr
        cloud = subprocess.run(train_argv("pipeline_backend.role=cloud",
                                          f"pipeline_backend.master_port={port}",
                                          "pipeline_backend.timeout_s=60",
                                          f"hydra.run.dir={tmp_path / 'cloud'}", *tiny),
                               env=train_env(), capture_output=True, text=True, timeout=240)
        out, _ = edge.communicate(timeout=60)
    finally:
        if edge.poll() is None:
            edge.kill()
            edge.wait()
    assert cloud.returncode == 0, cloud.stderr[-2000:]
    assert edge.returncode == 0 and "edgesplit: refused cloud process 127.0.0.1" in out, out[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_role_without_a_secret_is_refused(tmp_path):
    res = subprocess.run(train_argv("pipeline_backend.role=edge", f"hydra.run.dir={tmp_path / 'run'}"),
                         env=train_env(secret=None), capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    errors = [line for line in out.splitlines() if "error:" in line]
    assert res.returncode != 0 and errors, out[-2000:]
    assert "EDGESPLIT_SECRET" in errors[-1] and "pipeline_backend.secret" in errors[-1]
    assert "Traceback" not in out
