"""Many edges, one cloud in one process (edgesplit.clients): each algorithm's order, one client
equal to the single-edge run, FedAvg where a round ends, and the refusals."""
import re
from typing import Callable, List

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from edgesplit.assemble import assemble
from edgesplit.backends import build_backend
from edgesplit.boundary.meter import CommMeter
from edgesplit.clients.averaging import average_into
from edgesplit.clients.backend import ClientsBackend
from edgesplit.clients.dist import build_clients
from edgesplit.clients.partition import holdout, labels_of, partition
from edgesplit.clients.rounds import Turn, epoch_turns, sampled
from edgesplit.data.datasets import digits
from edgesplit.errors import ConfigError
from edgesplit.run.trainer import train_loader, val_loader
from edgesplit.validate import validate
from tests.conftest import TEST_MODEL
from tests.test_studies import _compose, _sweep_params

ONE_EPOCH = [*TEST_MODEL, "schedule.epochs=1", "data.num_workers=0", "data.train_size=96", "data.val_size=32",
             "data.batch_size=32"]


def _turns(algorithm: str) -> List[tuple]:
    turns = epoch_turns(algorithm, [3, 1, 2], rounds=2, local_steps=None, fraction=1.0, seed=0, epoch=0)
    return [(t.round, t.client) for t in turns]


def test_each_algorithm_runs_the_steps_in_its_order() -> None:
    # batches [3, 1, 2] over 2 rounds: client 0 takes 2 then 1, client 1 1 then 0, client 2 1 then 1
    assert _turns("sequential") == [(0, 0), (0, 0), (0, 1), (0, 2), (1, 0), (1, 2)]
    parallel = [(0, 0), (0, 1), (0, 2), (0, 0), (1, 0), (1, 2)]  # the cloud serves them in turn
    assert _turns("sflv1") == _turns("sflv2") == parallel
    # half the clients a round, drawn from (seed, epoch, round) alone
    drawn = [sampled(4, 0.5, 0, epoch, r) for epoch in range(3) for r in range(2)]
    assert all(len(d) == 2 for d in drawn) and len({tuple(d) for d in drawn}) > 1
    assert drawn == [sampled(4, 0.5, 0, epoch, r) for epoch in range(3) for r in range(2)]
    assert epoch_turns("sflv1", [2, 2], 1, 3, 1.0, 0, 0) == [Turn(0, 0), Turn(0, 1)] * 3  # local_steps


def _losses(cfg: DictConfig) -> List[float]:
    """One epoch's train-step losses and the validation losses after it, as the trainer runs them."""
    parts, meter = assemble(cfg), CommMeter()
    assert parts.datasets is not None
    clients = build_clients(parts, meter) if parts.clients is not None else None
    backend = clients or build_backend(parts, meter)
    try:
        torch.manual_seed(cfg.seed)
        backend.start_epoch(0)
        loader = clients.batches(0) if clients else train_loader(cfg, parts.datasets, None, 0)
        losses = [backend.train_step(x, y, ids).loss_sum for x, y, ids in loader]
        backend.train(False)
        with torch.no_grad():
            return losses + [backend.eval_step(x, y).loss_sum for x, y in val_loader(cfg, parts.datasets)]
    finally:
        backend.close()


@pytest.mark.parametrize("setting", [
    ["clients.algorithm=sequential", "pipeline_backend=naive", "pipeline_backend.chunks=1"],
    ["clients.algorithm=sflv1", "pipeline_backend=gpipe", "pipeline_backend.chunks=2",
     "compressor.error_feedback=true", "clients.rounds_per_epoch=2"],
    ["clients.algorithm=sflv2", "pipeline_backend=naive", "pipeline_backend.chunks=1", "compressor=delta"],
    pytest.param(["clients.algorithm=sflv2", "pipeline_backend=dist", "pipeline_backend.chunks=2"],
                 marks=pytest.mark.slow),  # one edge process against the single-edge dist run
], ids=["sequential-naive", "sflv1-gpipe-error_feedback", "sflv2-naive-delta", "sflv2-dist"])
def test_one_client_trains_as_the_single_edge_run(make_cfg: Callable[..., DictConfig],
                                                  setting: List[str]) -> None:
    single = _losses(make_cfg(*ONE_EPOCH, *setting))
    one = _losses(make_cfg(*ONE_EPOCH, *setting, "clients=many", "clients.count=1", "clients.holdout=0"))
    assert len(one) == len(single) == 4  # 3 steps, 1 validation batch
    assert one == pytest.approx(single, abs=1e-6, rel=0)


def test_a_round_ends_with_every_edge_averaged(make_cfg: Callable[..., DictConfig]) -> None:
    """sflv1: two clients' edges and cloud copies differ while they train and are one model once the
    round ends (FedAvg); sflv2 shares one cloud."""
    cfg = make_cfg(*ONE_EPOCH, "clients=many", "clients.count=2", "clients.algorithm=sflv1",
                   "data.batch_size=16", "pipeline_backend=naive", "pipeline_backend.chunks=1")
    backend = ClientsBackend(assemble(cfg), CommMeter())
    backend.start_epoch(0)
    first, second = (c.pipeline.local_units() for c in backend.clients)
    assert all(a is not b for a, b in zip(first.values(), second.values()))
    batches = iter(backend.batches(0))
    backend.train_step(*next(batches))  # client 0's first step: its parts alone move
    edge, cloud = backend.clients[0].edge[0], backend.clouds[0][0]
    assert not torch.equal(next(edge.parameters()), next(backend.clients[1].edge[0].parameters()))
    for batch in batches:
        backend.train_step(*batch)
    for i in first:
        for a, b in zip(first[i].state_dict().values(), second[i].state_dict().values()):
            assert torch.equal(a, b), i
    assert next(cloud.parameters()) is not next(backend.clouds[1][0].parameters())
    v2 = ClientsBackend(assemble(make_cfg(*ONE_EPOCH, "clients=many", "clients.count=2",
                                          "data.batch_size=16")), CommMeter())
    assert len(v2.clouds) == 1 and v2.clients[0].edge[0] is not v2.clients[1].edge[0]


def test_sequential_hands_one_edge_on_and_counts_its_weights(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(*ONE_EPOCH, "clients=many", "clients.count=2", "clients.algorithm=sequential",
                   "clients.holdout=0", "data.batch_size=16", "pipeline_backend=naive",
                   "pipeline_backend.chunks=1")
    backend = ClientsBackend(assemble(cfg), CommMeter())
    assert len(backend.clouds) == 1 and backend.clients[0].edge[0] is backend.clients[1].edge[0]
    backend.start_epoch(0)
    for batch in backend.batches(0):  # client 0's 3 steps, then client 1's: one hand-over
        backend.train_step(*batch)
    first, second = (c.tally for c in backend.clients)
    assert (first.averaging_up, first.averaging_down, second.averaging_up, second.averaging_down) \
        == (backend.edge_bytes, 0, 0, backend.edge_bytes) and backend.holder == 1
    assert first.samples == second.samples == 48


def test_fedavg_weighs_each_holder_by_its_samples_and_every_copy_ends_equal() -> None:
    holders = [nn.BatchNorm1d(2), nn.BatchNorm1d(2), nn.BatchNorm1d(2)]
    for value, bn in zip((1.0, 5.0, 100.0), holders):
        nn.init.constant_(bn.weight, value)
        assert bn.num_batches_tracked is not None
        bn.num_batches_tracked.fill_(int(value))
    average_into([[h] for h in holders], [1.0, 3.0, 0.0], [[h] for h in holders])  # the third sat out
    for bn in holders:
        assert torch.equal(bn.weight, torch.full((2,), 4.0))
        assert bn.num_batches_tracked is not None and int(bn.num_batches_tracked) == 5


REFUSED = [
    ("precision", "fp16", "clients.count=4 needs precision=fp32 or bf16"),
    ("privacy.label_leak", True, "clients.count=4 needs privacy.label_leak=false and "
                                 "privacy.input_leak=false"),
    ("clients.fraction", 0.0, "clients.fraction=0.0 is invalid: must be in (0, 1]"),
    ("clients.algorithm", "fedavg", "clients.algorithm='fedavg' is invalid"),
]


def test_what_many_edges_cannot_run_is_one_line(make_cfg: Callable[..., DictConfig]) -> None:
    many = make_cfg("clients.count=4")
    for key, value, says in REFUSED:
        cfg = many.copy()
        OmegaConf.update(cfg, key, value)
        with pytest.raises(ConfigError, match=re.escape(says)):
            validate(cfg)
    with pytest.raises(ConfigError, match="client 0 trains on 58 samples, fewer than data.batch_size=64"):
        assemble(make_cfg(*TEST_MODEL, "clients=many"))  # 256 samples, 4 clients, a tenth held out


def test_the_clients_preset_sweeps_count_algorithm_and_partition_on_digits() -> None:
    cfg = _compose("experiment=clients", "clients.count=8", "clients.partition=dirichlet")
    assert _sweep_params(cfg) == {"clients.count": ["1", "4", "8"],
                                  "clients.algorithm": ["sequential", "sflv1", "sflv2"],
                                  "clients.partition": ["iid", "dirichlet"]}
    assert (cfg.data.name, cfg.model.width, cfg.data.batch_size, cfg.schedule.lr, cfg.clients.alpha) \
        == ("digits", 0.25, 64, 0.2, 0.3)
    labels, c = labels_of(digits().train), cfg.clients  # the largest Dirichlet cell: a batch each, any seed
    for seed in range(3):
        parts = partition(labels, "dirichlet", 8, seed, c.alpha, c.min_samples)
        assert min(len(holdout(p, c.holdout, seed, k)[0]) for k, p in enumerate(parts)) >= 64
