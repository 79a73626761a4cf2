"""Many edges across processes (pipeline_backend=dist, edgesplit.clients.dist): K edge processes and
one cloud train as the in-process simulation, bytes per client included; each edge is admitted as
its own client only; a stalled edge is dropped from its round; what is not built is one line."""
import os
import re
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from edgesplit.assemble import assemble
from edgesplit.backends.remote import auth
from edgesplit.boundary.meter import CommMeter
from edgesplit.config import compose_config
from edgesplit.run import checkpoint, trainer
from edgesplit.clients.backend import ClientsBackend
from edgesplit.clients.dist import build_clients
from edgesplit.errors import ConfigError, PeerError
from edgesplit.run.trainer import val_loader
from edgesplit.validate import validate
from tests.dist_helpers import SECRET
from tests.sizes import TEST_MODEL
from tests.test_clients_run import MANY, _equal, _read
from tests.trained_run import Interrupt, as_tests_run, interrupt_after_first_epoch

# 4 clients of 32 samples (no hold-out), batch 16: two steps each, one round
FOUR = [*TEST_MODEL, "schedule.epochs=1", "schedule.warmup_epochs=0", "data.num_workers=0",
        "data.train_size=128", "data.val_size=32", "data.batch_size=16", "clients=many", "clients.count=4",
        "clients.holdout=0", "pipeline_backend.chunks=1"]


def _epoch(cfg: DictConfig, before: Callable[[ClientsBackend], None] = lambda b: None
           ) -> Tuple[List[float], Dict[str, float], Dict[str, Any]]:
    """One epoch as the trainer runs it: (train and validation losses, the epoch's client figures,
    the clients header)."""
    validate(cfg)
    parts = assemble(cfg)
    backend = build_clients(parts, CommMeter())
    try:
        torch.manual_seed(cfg.seed)
        backend.start_epoch(0)
        before(backend)
        losses = [backend.train_step(x, y, ids).loss_sum for x, y, ids in backend.batches(0)]
        backend.train(False)
        with torch.no_grad():
            losses += [backend.eval_step(x, y).loss_sum for x, y in val_loader(cfg, parts.datasets)]
        backend.side_stats()
        return losses, backend.epoch_figures(1), backend.header()
    finally:
        backend.close()


def _same_as_in_process(make_cfg: Callable[..., DictConfig], algorithm: str,
                        *more: str) -> Tuple[List[float], List[float]]:
    """(in process, dist) losses; every figure of every client but its compute time is equal."""
    setting = [*FOUR, f"clients.algorithm={algorithm}", *more]
    one, one_figures, _ = _epoch(make_cfg(*setting, "pipeline_backend=naive"))
    many, many_figures, header = _epoch(make_cfg(*setting, "pipeline_backend=dist"))
    assert header["processes"] == "edges" and header["dropped"] == []
    timing = {k for k in one_figures if k.endswith("compute_s")}
    assert {k: v for k, v in many_figures.items() if k not in timing} == \
        {k: v for k, v in one_figures.items() if k not in timing}
    assert one_figures["client1/up_bytes_per_round"] > 0
    assert one_figures["client1/averaging_up_bytes_per_round"] > 0  # counted apart
    assert len(many) == len(one) >= 8 + 2  # 4 clients x 2 steps or more, 2 validation batches
    return one, many


@pytest.mark.slow  # 2.5 s with the zygote warm, 9 s cold on a loaded machine
def test_four_edge_processes_train_as_the_in_process_clients(make_cfg: Callable[..., DictConfig]) -> None:
    """sflv2: one shared cloud serving four edge processes in the plan's turns, FedAvg through the
    cloud weighted by the clients' samples (Dirichlet: unequal): the losses step by step and each
    client's bytes (link and averaging) as in one process."""
    one, many = _same_as_in_process(make_cfg, "sflv2", "clients.partition=dirichlet", "clients.alpha=1",
                                    "clients.min_samples=16", "data.train_size=192")
    assert many == one


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sequential", "sflv1"])
def test_the_other_algorithms_train_as_in_process(make_cfg: Callable[..., DictConfig],
                                                  algorithm: str) -> None:
    """sequential: the edge handed from process to process through the cloud; sflv1: a cloud copy
    per client, averaged in the cloud (within float noise: here equal too)."""
    one, many = _same_as_in_process(make_cfg, algorithm)
    assert many == pytest.approx(one, abs=1e-6, rel=0)


def _stop(client: int) -> Callable[[ClientsBackend], None]:
    def stop(backend: ClientsBackend) -> None:
        os.kill(backend.world.children[client].pid, signal.SIGSTOP)  # type: ignore[attr-defined]
    return stop


@pytest.mark.slow
def test_a_stalled_edge_is_dropped_from_its_round_and_the_others_finish(
        make_cfg: Callable[..., DictConfig], caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(*FOUR, "clients.count=3", "data.train_size=96", "clients.algorithm=sflv2",
                   "clients.min_per_round=2", "pipeline_backend=dist", "pipeline_backend.timeout_s=3")
    losses, figures, header = _epoch(cfg, _stop(1))
    line = "client 1 dropped from round 1 of epoch 1: the cloud (rank 0) lost client 1 (edge rank 2)"
    assert any(r.getMessage().startswith(line) for r in caplog.records)
    assert len(header["dropped"]) == 1 and header["dropped"][0].startswith(line)
    assert figures["client1/samples"] == 0 and figures["client0/samples"] == figures["client2/samples"] == 32
    # the round ended with the others: FedAvg of theirs, back to them only
    up, down = "averaging_up_bytes_per_round", "averaging_down_bytes_per_round"
    assert figures[f"client0/{up}"] == figures[f"client2/{down}"] > 0
    assert figures[f"client1/{up}"] == figures[f"client1/{down}"] == 0
    assert len(losses) == 6 + 2 and losses[1] == 0.0  # client 1's two turns ran no step
    # below clients.min_per_round the run stops, in one line (the trainer keeps its last checkpoint)
    says = ("round 1 of epoch 1 ends with 2 of its 3 clients alive (clients [1] dropped), fewer than "
            "clients.min_per_round=3")
    with pytest.raises(PeerError, match=re.escape(says)):
        _epoch(make_cfg(*FOUR, "clients.count=3", "data.train_size=96", "clients.min_per_round=3",
                        "pipeline_backend=dist", "pipeline_backend.timeout_s=3"), _stop(1))


def test_an_edge_with_another_clients_key_is_refused() -> None:
    """Each edge proves its own client's secret: client 0's key cannot claim client 1's rank."""
    listener = auth.listening_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=10), wait_for_workers=False,
                          master_listen_fd=listener.detach())
    lines: List[str] = []
    gate = auth.Gate(store, SECRET, world_size=3, log=lines.append, per_rank=True)
    results: Dict[str, Any] = {}

    def edge(name: str, client_key: int, rank: int) -> None:
        peer = dist.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=10))
        try:
            secret = auth.client_secret(SECRET, client_key)
            results[name] = auth.join_session(peer, secret, rank, "127.0.0.1", port, 10)
        except PeerError as e:
            results[name] = str(e)

    impostor = threading.Thread(target=edge, args=("impostor", 0, 2))
    impostor.start()
    while "impostor" not in results:
        gate.poll()
        time.sleep(0.01)
    assert results["impostor"].startswith(f"the edge at 127.0.0.1:{port} refused this cloud process")
    assert gate.missing() == [1, 2]
    refused = (r"edgesplit: refused edge process \S+ pid \d+: it claims client 1 and does not hold that "
               r"client's key \(still waiting for 1, 2\)")
    assert len(lines) == 1 and re.fullmatch(refused, lines[0]), lines
    real = [threading.Thread(target=edge, args=(f"client{k}", k, k + 1)) for k in (0, 1)]
    for t in real:
        t.start()
    gate.wait(10)
    for t in real + [impostor]:
        t.join(10)
    assert [results[f"client{k}"][0] for k in (0, 1)] == [1, 2]
    # each client's message key is its own: neither can seal as the other
    assert results["client0"][1] == gate.keys[1] != gate.keys[2] == results["client1"][1]


@pytest.mark.parametrize("override, says", [
    ("pipeline_backend.edges=3", "pipeline_backend.edges=3 is invalid: must equal clients.count=4 (one edge "
                                 "process per client) or null (= clients.count)"),
    ("pipeline_backend.edges=5", "pipeline_backend.edges=5 is invalid: must equal clients.count=4"),
    ("pipeline_backend.role=edge",
     "pipeline_backend.client=None is invalid: must be in 0..3: the client this edge host is "
     "(pipeline_backend.role=edge with clients.count=4)"),
    ("pipeline_backend.role=edge pipeline_backend.client=4",
     "pipeline_backend.client=4 is invalid: must be in 0..3"),
    ("pipeline_backend.client=1",
     "pipeline_backend.client=1 is invalid: must be null: only an edge host of many edges "
     "(pipeline_backend.role=edge, clients=many) is a client"),
    ("partition.cloud_stages=2",
     "clients.count=4 needs partition.cloud_stages=1 with pipeline_backend=dist: a cloud of several stages "
     "serving many edges is not built yet"),
])
def test_what_many_edges_in_dist_cannot_run_is_one_line(make_cfg: Callable[..., DictConfig],
                                                        override: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        validate(make_cfg("pipeline_backend=dist", "clients=many", "clients.count=4", *override.split()))
    many = ["pipeline_backend=dist", "clients=many", "clients.count=4"]
    validate(make_cfg(*many, "pipeline_backend.edges=4"))
    validate(make_cfg(*many, "pipeline_backend.role=cloud"))
    validate(make_cfg(*many, "pipeline_backend.role=edge", "pipeline_backend.client=3"))


@pytest.mark.slow
def test_a_resumed_many_edge_dist_run_ends_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every edge process's parts, optimizer and codec state, the cloud copies (sflv1), the rounds
    run: checkpointed through the cloud and loaded back into new edge processes, as uninterrupted."""
    many = [m for m in MANY if not m.startswith("pipeline_backend=")] + ["pipeline_backend=dist"]
    with as_tests_run():
        trainer.run(compose_config(many), tmp_path / "straight", [])
        with monkeypatch.context() as kill:
            interrupt_after_first_epoch(kill)
            with pytest.raises(Interrupt):
                trainer.run(compose_config(many), tmp_path / "resumed", [])
        trainer.run(compose_config([*many, "resume=true"]), tmp_path / "resumed", [])
    assert [h["train_loss"] for h in _read(tmp_path / "resumed")["history"]] == \
        [h["train_loss"] for h in _read(tmp_path / "straight")["history"]]
    straight, resumed = (checkpoint.load(tmp_path / d / checkpoint.NAME) for d in ("straight", "resumed"))
    assert straight["clients"]["round"] == 4 and sorted(straight["clients"]["slots"]) == [0, 1, 2]
    for key in ("units", "optimizer", "boundaries", "clients"):
        _equal(straight[key], resumed[key], key)


def test_a_torchrun_rank_of_many_edges_without_a_role_is_refused_in_one_line(
        make_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(auth.ENV, SECRET)
    says = ("clients.count=4 under torchrun: every rank names its role, pipeline_backend.role=cloud (the one "
            "that trains) or pipeline_backend.role=edge pipeline_backend.client=k (one per client)")
    with pytest.raises(ConfigError, match=re.escape(says)):
        build_clients(assemble(make_cfg(*FOUR, "pipeline_backend=dist")), CommMeter())
