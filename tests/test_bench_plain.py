"""bench backends' plain row: the same units as one nn.Sequential in a plain PyTorch step, the baseline."""
import copy
import statistics

import pytest
import torch

from edgesplit.assemble import assemble
from edgesplit.backends import build_backend
from edgesplit.bench import backends
from edgesplit.bench._plain import PlainStep
from edgesplit.boundary.meter import CommMeter
from edgesplit.config import compose_config


def _rows(out: str) -> list:
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| ")]
    return rows


def test_plain_trains_the_same_model_as_naive_without_a_codec() -> None:
    """No split and no codec change nothing in the arithmetic: plain's losses are naive's, step by
    step (naive with compressor=none and one chunk sends exact fp32 copies across its boundaries)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order in both
    cfg = compose_config(["data=synthetic", "data.train_size=16", "data.batch_size=16", "model.width=0.125",
                          "compressor=none", "pipeline_backend=naive", "pipeline_backend.chunks=1",
                          "pipeline_backend.devices=[cpu,cpu,cpu]", "partition.front=3", "partition.back=2"])
    parts = assemble(cfg)
    datasets = parts.datasets
    assert datasets is not None
    plain = PlainStep(copy.deepcopy(parts.split.units), parts.spec, torch.device("cpu"))
    naive = build_backend(parts, CommMeter())
    x = torch.stack([datasets.train[i][0] for i in range(16)])
    y = torch.tensor([int(datasets.train[i][1]) for i in range(16)])
    try:
        naive.start_epoch(0)
        naive.train(True)
        losses = [(plain(x, y), naive.train_step(x, y, torch.arange(16)).loss_sum / 16) for _ in range(4)]
    finally:
        naive.close()
        torch.set_num_threads(threads)
    for got, want in losses:
        assert got == pytest.approx(want, rel=1e-5)
    assert losses[-1][0] < losses[0][0] - 1e-3  # it trains (the optimizer stepped)


@pytest.mark.slow
def test_bench_backends_reports_every_backend_as_a_ratio_of_plain(capsys: pytest.CaptureFixture) -> None:
    args = ["--backends", "plain,naive", "--width", "0.125", "--batch", "8", "--warmup", "1", "--steps", "3",
            "--threads", "1", "--compressor", "quantize"]
    assert backends.main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].strip() == "python -m edgesplit.bench backends " + " ".join(args)
    header, *rows = _rows(out)
    assert header[6:8] == ["time / plain", "memory / plain"]
    row = {r[0]: r for r in rows}
    assert row["plain"][6:8] == ["1.00x", "1.00x"] and row["plain"][8:10] == ["0", "0"]  # nothing sent
    assert int(row["naive"][8]) > 0
    ratio = float(row["naive"][6].rstrip("x"))
    assert ratio == pytest.approx(float(row["naive"][1]) / float(row["plain"][1]), rel=0.05, abs=0.011)


def test_without_a_plain_row_the_ratios_are_of_gpipe() -> None:
    cell = {"times": [2.0], "sides": {s: {"parameters": 1, "peak_memory_bytes": 100, "compute_s_per_batch": 1}
                                      for s in ("edge", "cloud")},
            "comm": CommMeter().summary().to_dict()}
    fast = {**cell, "times": [1.0]}
    assert backends.baseline({"gpipe": cell, "naive": fast}) == "gpipe"
    assert backends.baseline({"plain": fast, "gpipe": cell}) == "plain"
    assert backends.baseline({"plain": {"error": "x"}, "gpipe": cell}) == "gpipe"  # a failed plain row
    rows = {r[0]: r for r in _rows(backends.table({"plain": fast, "gpipe": cell}, 8))[1:]}
    assert rows["gpipe"][6] == "2.00x" and statistics.median(fast["times"]) == 1.0
