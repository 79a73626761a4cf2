"""Many edges across hosts (edgesplit.clients.hosts), run on this host as K + 1 hosts would run
them: the cloud's train.py with pipeline_backend.role=cloud and an edge's train.py per client with
role=edge pipeline_backend.client=k, each holding only its client's secret, by role (the cloud's
store) and under torchrun; either trains as the one-host many-edge dist run, every figure but time."""
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from edgesplit.backends.remote import auth
from edgesplit.clients.hosts import CLIENT_ENV
from edgesplit.config import compose_config
from edgesplit.run import trainer
from tests.dist_helpers import REPO, SECRET, free_port, train_env
from tests.sizes import TEST_MODEL, TINY
from tests.trained_run import as_tests_run

pytestmark = pytest.mark.slow
# 2 clients of 48 samples, a quarter held out: 2 steps of 16 each, one round, sflv2
TWO = [*TINY, *TEST_MODEL, "schedule.epochs=1", "schedule.warmup_epochs=0", "data.num_workers=0",
       "data.train_size=96", "data.val_size=32", "data.batch_size=16", "clients=many", "clients.count=2",
       "clients.algorithm=sflv2", "clients.holdout=0.25", "pipeline_backend=dist",
       "pipeline_backend.chunks=1"]
EDGE_ONLY = ["pipeline_backend=dist", "clients=many", "clients.count=2", "pipeline_backend.timeout_s=120"]


def _history(run_dir: Path) -> List[Dict[str, Any]]:
    """Each epoch's record and its client figures, without times and memory."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["clients"]["dropped"] == []
    figures = summary["clients"]["history"]
    assert len(figures) == 1 and figures[0]["client1/held_out_acc1"] >= 0  # the shards' held-out parts too
    return [{k: v for k, v in h.items() if not re.search(r"(_s|seconds|memory_bytes)$", k)}
            for h in summary["history"] + figures]


@pytest.fixture(scope="module")
def one_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Dict[str, Any]]]:
    """The one-host run: this process the cloud, two edge processes forked here."""
    run_dir = tmp_path_factory.mktemp("one_host")
    with as_tests_run():
        trainer.run(compose_config(TWO), run_dir, [])
    yield _history(run_dir)


def _edge_host(client: int, port: int, run_dir: Path) -> "subprocess.Popen[str]":
    env = train_env(secret=None)  # an edge host holds its client's secret only
    env[CLIENT_ENV] = auth.client_secret(SECRET, client)
    argv = [sys.executable, f"{REPO}/train.py", *EDGE_ONLY, "pipeline_backend.role=edge",
            f"pipeline_backend.client={client}", f"pipeline_backend.master_port={port}",
            f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(procs: List["subprocess.Popen[str]"]) -> List[str]:
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def test_two_edge_hosts_by_role_train_as_one_host(one_host: List[Dict[str, Any]], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The cloud (here, role=cloud, its own store) and two edge hosts (train.py, role=edge)."""
    monkeypatch.setenv(auth.ENV, SECRET)
    port = free_port()
    edges = [_edge_host(k, port, tmp_path / f"edge{k}") for k in (1, 0)]
    try:
        with as_tests_run():
            cloud = ["pipeline_backend.role=cloud", f"pipeline_backend.master_port={port}",
                     "pipeline_backend.timeout_s=120"]
            trainer.run(compose_config([*TWO, *cloud]), tmp_path / "cloud", [])
    finally:
        outs = _finish(edges)
    assert _history(tmp_path / "cloud") == one_host
    for k, out in zip((1, 0), outs):
        assert f"client {k}: admitted by the cloud as edge rank {k + 1} of 2 clients" in out, out[-2000:]
        assert f"client {k}: the cloud ended the run: exiting" in out
        assert not (tmp_path / f"edge{k}" / "summary.json").exists()  # only the cloud writes results


def test_a_torchrun_launch_of_a_cloud_and_two_edges_trains_as_one_host(one_host: List[Dict[str, Any]],
                                                                       tmp_path: Path) -> None:
    """`torchrun --nproc-per-node=3`: the roles (and each edge's client) set per rank, the clients
    in another order than torchrun's ranks (tests/torchrun_clients.py)."""
    port = free_port()
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=3",
            "--master-addr=127.0.0.1", f"--master-port={port}", f"{REPO}/tests/torchrun_clients.py",
            str(tmp_path / "run"), *TWO, "pipeline_backend.timeout_s=120"]
    out = _finish([subprocess.Popen(argv, env=train_env(), cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)])[0]
    assert _history(tmp_path / "run") == one_host
    for k in (0, 1):
        assert f"client {k}: admitted by the cloud as edge rank {k + 1} of 2 clients" in out, out[-3000:]
