"""Many edges across hosts (edgesplit.clients.hosts), run on this host as K + 1 hosts would run
them: the cloud's train.py with pipeline_backend.role=cloud and an edge's train.py per client with
role=edge pipeline_backend.client=k, each holding only its client's secret, by role (the cloud's
store) and under torchrun; either trains as the one-host many-edge run, every figure but time.
In one process: an edge host's secret is its client's only; an edge's spec carries no secret, and
the edge derives its shard and refuses one that is not the cloud's."""
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from edgesplit.assemble import assemble, pipeline_of
from edgesplit.backends.remote import auth, launch
from edgesplit.clients import keys
from edgesplit.clients.dist import DistClientsBackend
from edgesplit.clients.edge_process import ClientEdge, EdgeSpec
from edgesplit.clients.hosts import CLIENT_ENV, _join, _torchrun, client_secret_of
from edgesplit.config import compose_config
from edgesplit.errors import ConfigError, PeerError
from edgesplit.run import trainer
from edgesplit.validate import validate
from tests.dist_helpers import REPO, SECRET, finish, free_port, train_env
from tests.sizes import TEST_MODEL, TINY
from tests.trained_run import as_tests_run

# 2 clients of 48 samples, a quarter held out: 2 steps of 16 each, one round, sflv2
TWO = [*TINY, *TEST_MODEL, "schedule.epochs=1", "schedule.warmup_epochs=0", "data.num_workers=0",
       "data.train_size=96", "data.val_size=32", "data.batch_size=16", "clients=many", "clients.count=2",
       "clients.algorithm=sflv2", "clients.holdout=0.25", "pipeline_backend=dist",
       "pipeline_backend.chunks=1"]
EDGE_ONLY = ["pipeline_backend=dist", "clients=many", "clients.count=2", "pipeline_backend.timeout_s=120"]


def _history(run_dir: Path) -> List[Dict[str, Any]]:
    """Each epoch's record and its client figures, without times and memory."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and not summary["clients"].get("dropped")
    figures = summary["clients"]["history"]
    assert len(figures) == 1 and figures[0]["client1/held_out_acc1"] >= 0  # the shards' held-out parts too
    return [{k: v for k, v in h.items() if not re.search(r"(_s|seconds|memory_bytes)$", k)}
            for h in summary["history"] + figures]


@pytest.fixture(scope="module")
def one_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Dict[str, Any]]]:
    """The reference: the run in one process (naive), which the one-host dist run (an edge process
    per client) equals figure for figure (tests/test_clients_dist.py): cheaper, and as strict."""
    run_dir = tmp_path_factory.mktemp("one_host")
    with as_tests_run():
        trainer.run(compose_config([*TWO, "pipeline_backend=naive"]), run_dir, [])
    yield _history(run_dir)


def _edge_host(client: int, port: int, run_dir: Path) -> "subprocess.Popen[str]":
    env = train_env(secret=None)  # an edge host holds its client's secret only
    env[CLIENT_ENV] = auth.client_secret(SECRET, client)
    argv = [sys.executable, f"{REPO}/train.py", *EDGE_ONLY, "pipeline_backend.role=edge",
            f"pipeline_backend.client={client}", f"pipeline_backend.master_port={port}",
            f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
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
        outs = finish(edges)
    assert _history(tmp_path / "cloud") == one_host
    for k, out in zip((1, 0), outs):
        assert f"client {k}: admitted by the cloud as edge rank {k + 1} of 2 clients" in out, out[-2000:]
        assert f"client {k}: the cloud ended the run: exiting" in out
        assert not (tmp_path / f"edge{k}" / "summary.json").exists()  # only the cloud writes results


@pytest.mark.slow
def test_a_torchrun_launch_of_a_cloud_and_two_edges_trains_as_one_host(one_host: List[Dict[str, Any]],
                                                                       tmp_path: Path) -> None:
    """`torchrun --nproc-per-node=3`: the roles (and each edge's client) set per rank, the clients
    in another order than torchrun's ranks (tests/torchrun_clients.py)."""
    port = free_port()
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=3",
            "--master-addr=127.0.0.1", f"--master-port={port}", f"{REPO}/tests/torchrun_clients.py",
            str(tmp_path / "run"), *TWO, "pipeline_backend.timeout_s=120"]
    out = finish([subprocess.Popen(argv, env=train_env(), cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)])[0]
    assert _history(tmp_path / "run") == one_host
    for k in (0, 1):
        assert f"client {k}: admitted by the cloud as edge rank {k + 1} of 2 clients" in out, out[-3000:]


class _Wire:
    """A transport that keeps what is sent (the specs) and sends nothing."""
    timeout_s = 10.0

    def __init__(self) -> None:
        self.sent: Dict[int, bytes] = {}

    def send(self, dst: int, header: Any, payload: torch.Tensor) -> None:
        self.sent[dst] = payload.numpy().tobytes()

    def wait_sent(self, handles: List[Any], dst: int) -> None:
        pass


def test_an_edge_gets_no_secret_and_derives_its_own_shard(make_cfg: Callable[..., DictConfig]) -> None:
    """The cloud's spec for each edge leaves its secret out; the edge's shard, derived from the seeded
    partition on its own data set, is the cloud's (held-out part included), and a digest that is not
    its shard's is refused in one line."""
    cfg = make_cfg(*TWO, f"pipeline_backend.secret={SECRET}")
    validate(cfg)
    parts = assemble(cfg)
    assert parts.clients is not None
    cloud, wire = DistClientsBackend.__new__(DistClientsBackend), _Wire()
    cloud.spec, cloud.run, cloud.t = parts.clients.spec, parts.clients, wire  # type: ignore[assignment]
    cloud._send_specs(parts.spec)
    assert sorted(wire.sent) == [1, 2] and not any(SECRET.encode() in text for text in wire.sent.values())
    spec = EdgeSpec.from_json(wire.sent[2].decode())
    edge = ClientEdge(spec, wire)  # type: ignore[arg-type]
    assert edge.train_ids.tolist() == parts.clients.train[1].tolist()
    assert edge.held_ids.tolist() == parts.clients.held_out[1].tolist() and len(edge.held_ids) == 12
    says = ("client 1: its shard of the partition (36 training, 12 held-out samples) is not the cloud's: "
            "this host's data set differs")
    with pytest.raises(PeerError, match=re.escape(says)):
        ClientEdge(replace(spec, shard=parts.clients.shard(0)), wire)  # type: ignore[arg-type]


@pytest.mark.parametrize("env, says", [
    ({auth.ENV: SECRET}, f"an edge host of many edges needs its own client's secret: set {CLIENT_ENV} to "
                         f"what `python -m edgesplit.clients.keys K` prints on the cloud's host (K: its "
                         f"pipeline_backend.client); {auth.ENV} is the run secret, from which every "
                         f"client's derives: keep it on the cloud's host"),
    ({}, f"an edge host of many edges needs its own client's secret: set {CLIENT_ENV}"),
    ({CLIENT_ENV: "short"}, f"{CLIENT_ENV} is too short (5 characters)"),
    ({auth.ENV: SECRET, CLIENT_ENV: auth.client_secret(SECRET, 1)}, ""),
])
def test_an_edge_host_holds_its_clients_secret_only(make_cfg: Callable[..., DictConfig],
                                                    monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                                    env: Dict[str, str], says: str) -> None:
    for key in (auth.ENV, CLIENT_ENV):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    b = pipeline_of(make_cfg("pipeline_backend=dist").pipeline_backend).dist
    assert b is not None
    if says:
        with pytest.raises(ConfigError, match=re.escape(says)):
            client_secret_of(b)
        return
    assert client_secret_of(b) == auth.client_secret(SECRET, 1) != SECRET  # never the run secret
    assert keys.main(["1"]) == 0  # what the cloud's operator hands to edge host 1
    assert capsys.readouterr().out.strip() == auth.client_secret(SECRET, 1)


def test_an_edge_host_with_another_clients_secret_is_refused_in_one_line(
        make_cfg: Callable[..., DictConfig]) -> None:
    """Edge host 1 holding client 0's secret: the cloud refuses it, and its line says what to set."""
    port = free_port()
    b = pipeline_of(make_cfg("pipeline_backend=dist", f"pipeline_backend.master_port={port}",
                             "pipeline_backend.timeout_s=10").pipeline_backend).dist
    assert b is not None
    store = launch.serve_store("127.0.0.1", port, 10, server="the cloud")
    gate = auth.Gate(store, SECRET, world_size=3, log=lambda line: None, per_rank=True)
    said: List[str] = []

    def edge_host() -> None:
        try:
            _join(b, 2, 1, auth.client_secret(SECRET, 0))
        except PeerError as e:
            said.append(str(e))
    thread = threading.Thread(target=edge_host)
    thread.start()
    while thread.is_alive():
        gate.poll()
        time.sleep(0.01)
    assert said == [f"the cloud at 127.0.0.1:{port} refused client 1: its secret differs ({CLIENT_ENV} is "
                    f"not client 1's: set it to what `python -m edgesplit.clients.keys 1` prints on the "
                    f"cloud's host)"] and gate.missing() == [1, 2]


def test_a_torchrun_launch_without_one_rank_per_client_is_refused_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-rank launch of a two-client run: the cloud's rank names what torchrun started."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                       "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    says = ("torchrun started 1 cloud rank(s) and edges of clients []: clients.count=2 needs one "
            "pipeline_backend.role=cloud and one pipeline_backend.role=edge per pipeline_backend.client 0..1")
    try:
        with pytest.raises(PeerError, match=re.escape(says)):
            _torchrun("cloud", 2, None, SECRET, 10)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
