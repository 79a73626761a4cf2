"""The attacks in every backend: they change no training figure, and naive, gpipe and dist (the cloud
in its own process) give the same leakage figures."""
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch.utils.data import TensorDataset

from edgesplit.privacy.probe import build_probe
from edgesplit.privacy.schema import PrivacyConfig
from tests.dist_helpers import build, config, data

pytestmark = pytest.mark.slow  # a dist pair's start, four short runs

ATTACKS = PrivacyConfig(label_leak=True, input_leak=True, batches=2, scored=8, decoder_steps=3)


class Batches(list):
    """data()'s batches as the trainer's loader offers them (its `dataset`, for the error text)."""
    dataset: Any = None


def run(name: str, probed: bool, tmp: Path, stateful: bool,
        chunks: int = 2) -> Tuple[List[float], List[Dict[str, float]]]:
    """Two epochs of `name` on data()'s batches as the trainer drives them: losses, and the attacks'
    figures after each epoch (none when not `probed`). `stateful`: stochastic rounding keyed by
    step and sample and error feedback's residuals on both ends (the samples' ids cross with the
    activations), else plain 8-bit quantization (no ids cross)."""
    cfg = config(chunks=chunks, compressor="quantize2_sr_group" if stateful else "quantize")
    cfg.compressor.error_feedback = stateful
    val = data(2, batch=16, seed=2)
    images = TensorDataset(torch.cat([x for x, _, _ in val]), torch.cat([y for _, y, _ in val]))
    backend = build(name, cfg)
    try:
        probe = (build_probe(ATTACKS, backend, list(backend.split.edge_front), images, 0, tmp)  # type: ignore
                 if probed else None)
        losses, figures = [], []
        for epoch in range(2):
            backend.start_epoch(epoch)
            backend.train(True)
            batches = Batches(data(4, batch=16))
            for x, y, ids in (batches if probe is None else probe.watch(batches)):
                r = backend.train_step(x, y, ids)
                losses.append(r.loss_sum / r.count)
            backend.side_stats()
            if probe is not None:
                figures.append(probe.figures(epoch))
        return losses, figures
    finally:
        backend.close()


def test_backends_leak_alike_and_train_as_without_the_attacks(tmp_path: Path) -> None:
    # an attack that encoded with the run's codec state or draws would move the losses
    assert run("gpipe", True, tmp_path, stateful=True)[0] == run("gpipe", False, tmp_path, stateful=True)[0]
    # naive runs the batch whole (chunks 1: batch norm's statistics as gpipe's with one micro-batch)
    for other, chunks in (("dist", 2), ("naive", 1)):
        gpipe, gpipe_figures = run("gpipe", True, tmp_path, stateful=False, chunks=chunks)
        losses, figures = run(other, True, tmp_path, stateful=False, chunks=chunks)
        assert losses == pytest.approx(gpipe, rel=1e-5, abs=1e-6), other
        for ours, theirs in zip(gpipe_figures, figures):
            assert {k: v for k, v in theirs.items() if k != "seconds"} == pytest.approx(
                {k: v for k, v in ours.items() if k != "seconds"}, rel=1e-4, abs=1e-6), other
    # the labels are matched to their rows: the gradient of a linear head gives them away
    assert min(f["label_auc_cosine"] for f in gpipe_figures) > 0.9, gpipe_figures
