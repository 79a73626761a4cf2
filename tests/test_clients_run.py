"""A multi-client run through the trainer: its figures (summary.json, metrics.csv, TensorBoard's
tags) and its resume, bit-exact."""
import csv
import json
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import torch

from edgesplit.assemble import assemble
from edgesplit.clients.averaging import state_bytes
from edgesplit.config import compose_config
from edgesplit.logs.metrics_csv import COLUMNS
from edgesplit.logs.summary import RunSummary
from edgesplit.run import checkpoint, trainer
from edgesplit.report import clients as clients_report
from edgesplit.report.build import build_report, figures as report_figures, setting_keys
from edgesplit.report.runs import find_runs, group_runs
from tests.conftest import TEST_MODEL, TINY
from tests.test_report import _run_dir, _summary, _table
from tests.trained_run import Interrupt, TrainedRun, as_tests_run, interrupt_after_first_epoch

# 3 clients, 2 sampled a round, 2 rounds an epoch, a quarter of each client's samples held out;
# per-client state everywhere: edges, cloud copies (sflv1), optimizers, error-feedback residuals
MANY = [*TINY, *TEST_MODEL, "clients=many", "clients.count=3", "clients.algorithm=sflv1",
        "clients.fraction=0.67", "clients.rounds_per_epoch=2", "clients.holdout=0.25", "data.batch_size=16",
        "compressor.error_feedback=true", "pipeline_backend=naive", "pipeline_backend.chunks=1",
        "data.num_workers=0", "data.train_size=192", "data.val_size=64"]


@pytest.fixture(scope="module")
def many_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The run dir of MANY trained start to end."""
    root = tmp_path_factory.mktemp("many")
    with as_tests_run():
        trainer.run(compose_config(MANY), root / "straight", [])
    yield root / "straight"


def _read(run_dir: Path) -> Dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def _equal(a: Any, b: Any, where: str = "") -> None:
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.mark.slow
def test_a_resumed_many_client_run_ends_bit_exact(many_run: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every client's optimizer, codec state and the averaged parts, the rounds run: as uninterrupted."""
    with monkeypatch.context() as kill:
        interrupt_after_first_epoch(kill)
        with pytest.raises(Interrupt):
            trainer.run(compose_config(MANY), tmp_path, [])
    trainer.run(compose_config([*MANY, "resume=true"]), tmp_path, [])
    numbers = ("lr", "train_loss", "val_loss", "val_acc1", "up_bytes_per_batch", "down_bytes_per_batch")
    for resumed, straight in zip(_read(tmp_path)["history"], _read(many_run)["history"], strict=True):
        assert {k: resumed[k] for k in numbers} == {k: straight[k] for k in numbers}
    untimed = [[{k: v for k, v in h.items() if not k.endswith("compute_s")}
                for h in _read(d)["clients"]["history"]] for d in (tmp_path, many_run)]
    assert untimed[0] == untimed[1]
    straight, resumed = (checkpoint.load(d / checkpoint.NAME) for d in (many_run, tmp_path))
    assert straight["clients"]["round"] == 4 and sorted(straight["clients"]["slots"]) == [0, 1, 2]
    for key in ("units", "optimizer", "boundaries", "rng", "clients"):
        _equal(straight[key], resumed[key], key)


def test_a_many_client_run_reports_each_client(many_run: Path) -> None:
    s = _read(many_run)
    clients = s["clients"]
    assert (clients["count"], clients["algorithm"], clients["rounds"]) == (3, "sflv1", 4)
    assert sum(clients["train_samples"]) + sum(clients["held_out_samples"]) == 192
    last = clients["history"][-1]
    steps = last["clients/samples"] / 16
    # each client's payloads are the single-edge meter's per batch; the run's meter sums them
    for k in range(3):
        up = last[f"client{k}/up_bytes_per_round"] * 2  # 2 rounds
        assert up == pytest.approx(s["comm"]["up_bytes_per_batch"] * last[f"client{k}/samples"] / 16)
        assert 0 <= last[f"client{k}/held_out_acc1"] <= 100
    assert last["clients/up_bytes_per_round"] * 2 == pytest.approx(s["comm"]["up_bytes_per_batch"] * steps)
    # FedAvg's traffic apart: 2 clients send their edge parts a round, 3 get the average back
    parts = assemble(compose_config(MANY))
    edge = state_bytes([parts.split.units[i] for i in parts.split.edge_indices])
    assert (last["clients/averaging_up_bytes_per_round"], last["clients/averaging_down_bytes_per_round"]) \
        == (2 * edge, 3 * edge)
    tags = RunSummary.from_dict(s).epoch_scalars()  # what TensorBoard gets, one family per client
    assert {"client2/held_out_acc1", "client0/averaging_up_bytes_per_round", "clients/samples"} <= set(tags)
    with open(many_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and list(rows[0])[:len(COLUMNS)] == COLUMNS
    assert float(rows[1]["client1/samples"]) == last["client1/samples"]


def test_a_single_edge_run_records_no_client_figures(trained_run: TrainedRun) -> None:
    assert "clients" not in trained_run.straight_summary
    with open(trained_run.straight / "metrics.csv") as f:
        assert next(csv.reader(f)) == COLUMNS


def test_the_report_tables_many_edges_by_count_and_algorithm(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for partition in ("iid", "dirichlet"):
        for count in (1, 4):
            for algorithm in ("sflv1", "sflv2"):
                summary = _summary(90.0 + count + (algorithm == "sflv2") - 5 * (partition == "dirichlet"))
                summary.record_clients({"count": count}, {"epoch": 3,
                                                          "clients/link_bytes_per_round": 2000.0 * count,
                                                          "clients/averaging_bytes_per_round": 30.0 * count})
                _run_dir(tmp_path / str(job), [f"clients.count={count}", f"clients.algorithm={algorithm}",
                                               f"clients.partition={partition}"], summary)
                job += 1
    text = build_report(find_runs([tmp_path]))
    head = "## Many edges: {}, rows clients.count, columns clients.algorithm (clients.partition=dirichlet)"
    assert _table(text, head.format("best_val_acc1 (%)")) == [
        ["clients.count \\ clients.algorithm", "sflv1", "sflv2"], ["1", "86.00", "87.00"],
        ["4", "89.00", "90.00"]]
    assert [row[1:] for row in _table(text, head.format("up+down bytes per client and round"))[1:]] \
        == [["2 kB", "2 kB"]] * 2
    fedavg = _table(text, head.format("FedAvg bytes per client and round (up+down)"))
    assert fedavg[2] == ["4", "30 B", "30 B"]
    # clients.png: per partition a panel, per (count, algorithm) a point at the bytes one client moved
    runs = find_runs([tmp_path])
    assert {clients_report.bytes_per_client(r) for r in runs} == {2030.0}  # (2000 + 30) x count / count
    assert "clients.png" in report_figures(runs)
    fig = clients_report.plot_clients(group_runs(runs), setting_keys(runs))
    assert [len(ax.containers) for ax in fig.axes] == [4, 4]
    assert [ax.get_title() for ax in fig.axes] == ["clients.partition=iid", "clients.partition=dirichlet"]
