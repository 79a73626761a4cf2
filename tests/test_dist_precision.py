"""precision and channels_last in dist: gpipe's losses, and one fp16 scaler decision on every side."""
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from edgesplit.boundary.meter import CommMeter
from tests.dist_helpers import build, config, data, dist_process_count, run_backend
from tests.precision_units import loud_units

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    assert dist_process_count() == 0, "a cloud rank outlived its backend"


def _train(name: str, cfg: DictConfig, batches: List[tuple],
           units: Optional[List[nn.Module]] = None) -> Tuple[List[float], List[int], Dict[str, Any]]:
    """Losses and skipped flags of each step, and every process's GradScaler state after them."""
    backend = build(name, cfg, units=units)
    losses, skipped = [], []
    try:
        backend.start_epoch(0)
        backend.train(True)
        for x, y, ids in batches:
            r = backend.train_step(x, y, ids)
            losses.append(r.loss_sum / r.count)
            skipped.append(r.skipped)
        return losses, skipped, backend.state_dict()["grad_scaler"]
    finally:
        backend.close()


def test_bf16_and_channels_last_give_the_gpipe_losses_and_bytes() -> None:
    cfg = config(chunks=2, stages=1, compressor="quantize", threads=1)
    cfg.precision, cfg.channels_last = "bf16", True
    batches = data(2, batch=10) * 3
    m_gpipe, m_dist = CommMeter(), CommMeter()
    ref = run_backend("gpipe", cfg, batches, m_gpipe)
    got = run_backend("dist", cfg, batches, m_dist)
    assert got[-1] < got[0] and got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert dict(m_dist.bytes) == dict(m_gpipe.bytes) and dict(m_dist.raw_bytes) == dict(m_gpipe.raw_bytes)
    summary = m_dist.summary()  # the cloud's counts merged: both dtypes of both boundaries
    assert (summary.activation_dtype, summary.gradient_dtype) == ("bfloat16", "bfloat16")
    assert summary.raw_fp32_up_bytes_per_batch == 2 * summary.raw_up_bytes_per_batch
    cfg.channels_last = False
    contiguous = run_backend("gpipe", cfg, batches)
    assert contiguous == pytest.approx(got, rel=1e-3)


@pytest.mark.parametrize("where", ["edge", "cloud"])
def test_fp16_every_side_skips_an_overflowed_step_together(where: str) -> None:
    """edge: the loss scale overflows the edge's classifier gradient (and the back boundary's
    gradient, which crosses as zeros: the cloud's own gradients stay finite); cloud: a cloud unit's
    weight gradient overflows, nothing on the edge does. Either way every process skips the same
    steps as gpipe's one scaler, so the losses stay gpipe's, and every scale stays equal."""
    cfg = config(chunks=2, stages=2, compressor="quantize", threads=1)
    cfg.precision = "fp16"
    units = None
    if where == "edge":
        cfg.loss_scale = 2.0 ** 20
    else:
        cfg.loss_scale = 2.0 ** 18
        cfg.model._target_ = "tests.precision_units.loud_units"
        units = loud_units()
    batches = data(1) * 7
    ref, ref_skipped, ref_scaler = _train("gpipe", cfg, batches, units)
    got, skipped, scalers = _train("dist", cfg, batches, units)
    assert 1 <= sum(skipped) <= 4 and skipped[-1] == 0, skipped
    assert skipped == ref_skipped
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert got[-1] < got[0]
    assert sorted(scalers) == ["cloud_stage1", "cloud_stage2", "edge"]
    assert all(s == ref_scaler["edge"] for s in scalers.values()), scalers
    assert ref_scaler["edge"]["scale"] == cfg.loss_scale / 2 ** sum(skipped)
