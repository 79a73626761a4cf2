"""On a GPU (marker `cuda`, skipped without one): autocast in gpipe's partitions, fp16's loss scaler,
and the training set resident on the GPU, as the CPU tests check them on the host."""
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from edgesplit.run import trainer
from edgesplit.data.resident import ResidentLoader
from tests.precision_units import PROBES
from tests.test_backends import train_losses
from tests.test_data import data_tiny_cifar  # noqa: F401 (a fixture)
from tests.test_precision import _steps
from tests.test_resident import _cifar

pytestmark = pytest.mark.cuda

CUDA3 = "pipeline_backend.devices=[cuda:0,cuda:0,cuda:0]"
SPLIT = ["partition.front=2", "partition.back=2"]


@pytest.fixture(autouse=True)
def _no_autotuning() -> Iterator[None]:
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        yield


@pytest.mark.parametrize("augment", [False, True, "fixed"])
def test_resident_batches_on_the_gpu_are_the_host_paths(
        data_tiny_cifar: Any, augment: Any) -> None:  # noqa: F811
    ds = _cifar(data_tiny_cifar, augment)
    for epoch in (0, 1):
        kwargs = dict(seed=3, epoch=epoch, fixed_augment=augment == "fixed", channels_last=True)
        gpu = list(ResidentLoader(ds.resident_train("cuda"), 6, **kwargs))
        host = list(ResidentLoader(ds.resident_train("cpu_resident"), 6, **kwargs))
        assert len(gpu) == len(host) == 3
        for (x, y, ids), (hx, hy, hids) in zip(gpu, host):
            assert x.device.type == "cuda" and ids.device.type == "cpu"
            assert torch.equal(ids, hids) and torch.equal(y.cpu(), hy)
            assert torch.equal(x.cpu(), hx)  # the same crops, flips and normalized values


def test_gpipe_on_the_gpu_enters_autocast_in_every_partition(make_cfg: Callable) -> None:
    PROBES.clear()
    cfg = make_cfg("model._target_=tests.precision_units.probe_units", "model.width=1", *SPLIT,
                   "pipeline_backend=gpipe", "pipeline_backend.chunks=2", CUDA3,
                   "pipeline_backend.checkpoint=always", "precision=bf16", "channels_last=true")
    losses, meter = train_losses(cfg, steps=2, built=PROBES.clear)  # the training's forwards only
    assert losses[-1] < losses[0]
    assert len(PROBES) == 8 and all(p["autocast"] and p["dtype"] == torch.bfloat16 for p in PROBES)
    assert meter.summary().activation_dtype == "bfloat16"


def test_fp16_on_the_gpu_skips_overflowed_steps_then_trains(make_cfg: Callable) -> None:
    forced = _steps(make_cfg(*SPLIT, "pipeline_backend=gpipe", "pipeline_backend.chunks=2", CUDA3,
                             "precision=fp16", "loss_scale=1048576"), 16)
    k = sum(forced["skipped"])
    assert 1 <= k <= 10 and forced["skipped"] == [1] * k + [0] * (16 - k)
    assert forced["changed"] == [False] * k + [True] * (16 - k)
    assert forced["losses"][-1] < forced["losses"][k]


def test_a_bf16_channels_last_run_on_resident_gpu_data(make_cfg: Callable, tmp_path: Path) -> None:
    summary = trainer.run(make_cfg(*SPLIT, "pipeline_backend=gpipe", "pipeline_backend.chunks=2", CUDA3,
                                   "precision=bf16", "channels_last=true", "data.device=cuda"),
                          tmp_path, [])
    assert summary["status"] == "finished" and summary["activation_dtype"] == "bfloat16"
    assert all(h["data_s"] > 0 for h in summary["history"])
