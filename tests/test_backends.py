"""naive and gpipe: the same training losses at chunks=1, bytes counted once under checkpointing."""
from typing import Callable, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from edgesplit.assemble import RunParts, assemble
from edgesplit.backends import Backend, build_backend
from edgesplit.boundary.meter import CommMeter
from edgesplit.data.datasets import build_loader

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def backend_and_batch(cfg: DictConfig, meter: CommMeter) -> Tuple[Backend, RunParts, Batch]:
    """The backend of cfg, assembled as the trainer does, its parts and the first training batch
    (x, y, dataset indices)."""
    parts = assemble(cfg)
    assert parts.datasets is not None
    backend = build_backend(parts, meter)
    loader = build_loader(parts.datasets.train, cfg.data.batch_size, train=True,
                          seed=cfg.seed, epoch=0, num_workers=0)
    return backend, parts, next(iter(loader))


def train_losses(cfg: DictConfig, steps: int = 4,
                 built: Callable[[], None] = lambda: None) -> Tuple[List[float], CommMeter]:
    """Losses of `steps` train steps on one batch, as the trainer drives a backend; the meter
    holds every process's counts (side_stats merges them). `built` is called once the backend is
    (the assembly's probe forwards are over) and before the first step."""
    meter = CommMeter()
    backend, _, (x, y, ids) = backend_and_batch(cfg, meter)
    built()
    losses = []
    try:
        backend.start_epoch(0)
        backend.train(True)
        for _ in range(steps):  # the same batch: the loss must fall
            result = backend.train_step(x, y, ids)
            losses.append(result.loss_sum / result.count)
        backend.side_stats()
    finally:
        backend.close()
    return losses, meter


@pytest.mark.parametrize("compressor", ["none", "quantize", "prune"])
def test_naive_and_gpipe_give_the_same_losses_at_one_chunk(make_cfg: Callable, compressor: str) -> None:
    common = [f"compressor={compressor}", "partition.front=2", "partition.back=2"]
    naive, naive_meter = train_losses(make_cfg(*common, "pipeline_backend=naive"))
    gpipe, gpipe_meter = train_losses(make_cfg(*common, "pipeline_backend=gpipe",
                                               "pipeline_backend.chunks=1"))
    assert naive[-1] < naive[0]
    assert naive == pytest.approx(gpipe, rel=1e-5, abs=1e-6)
    assert naive_meter.summary().up_bytes_per_batch == gpipe_meter.summary().up_bytes_per_batch


def test_checkpointed_partitions_count_bytes_once_and_replay_the_first_pass(make_cfg: Callable) -> None:
    common = ["compressor=prune", "pipeline_backend=gpipe", "pipeline_backend.chunks=4",
              "partition.cloud_stages=2"]
    always, always_meter = train_losses(make_cfg(*common, "pipeline_backend.checkpoint=always"))
    never, never_meter = train_losses(make_cfg(*common, "pipeline_backend.checkpoint=never"))
    assert always == pytest.approx(never, rel=1e-5, abs=1e-6)
    assert always_meter.summary().to_dict() == pytest.approx(never_meter.summary().to_dict(), rel=1e-6)


def test_micro_batches_change_what_is_compressed(make_cfg: Callable) -> None:
    """Top-k and min/max work per micro-batch: 4 chunks send 4 headers and select per chunk."""
    one, one_meter = train_losses(make_cfg("compressor=quantize", "pipeline_backend=gpipe",
                                           "pipeline_backend.chunks=1"), steps=1)
    four, four_meter = train_losses(make_cfg("compressor=quantize", "pipeline_backend=gpipe",
                                             "pipeline_backend.chunks=4"), steps=1)
    assert four_meter.summary().up_bytes_per_batch > one_meter.summary().up_bytes_per_batch
    assert one_meter.summary().raw_up_bytes_per_batch == four_meter.summary().raw_up_bytes_per_batch


def test_directions_add_up_from_the_four_counts(make_cfg: Callable) -> None:
    _, meter = train_losses(make_cfg("compressor=none", "pipeline_backend=naive"), steps=2)
    s = meter.summary().to_dict()
    assert s["up_bytes_per_batch"] == s["front_forward_bytes_per_batch"] + s["back_backward_bytes_per_batch"]
    down = s["back_forward_bytes_per_batch"] + s["front_backward_bytes_per_batch"]
    assert s["down_bytes_per_batch"] == down
    # none sends fp32 plus a small header: within a few dozen bytes of raw per message
    assert 0 < s["up_bytes_per_batch"] - s["raw_up_bytes_per_batch"] < 2 * 128


def test_explicit_devices_must_list_every_partition(make_cfg: Callable) -> None:
    from edgesplit.errors import ConfigError
    cfg = make_cfg("pipeline_backend=gpipe", "pipeline_backend.devices=[cpu,cpu]")
    with pytest.raises(ConfigError, match="pipeline_backend.devices has 2 entries"):
        train_losses(cfg, steps=1)


def ready_backend(cfg: DictConfig) -> Tuple[Backend, List[torch.nn.Module], Batch]:
    """A backend in training mode at epoch 0, its units and the first training batch (x, y, ids)."""
    backend, parts, batch = backend_and_batch(cfg, CommMeter())
    backend.start_epoch(0)
    backend.train(True)
    return backend, parts.split.units, batch


def _trained(cfg: DictConfig) -> Tuple[Backend, List[torch.nn.Module], Tuple[torch.Tensor, torch.Tensor]]:
    """A backend after one train step, its units and the batch."""
    backend, units, (x, y, ids) = ready_backend(cfg)
    backend.train_step(x, y, ids)
    return backend, units, (x, y)


@pytest.mark.parametrize("name", ["naive", "gpipe"])
def test_eval_compressed_false_evaluates_the_uncompressed_model(make_cfg: Callable, name: str) -> None:
    losses = {}
    for on in (True, False):
        cfg = make_cfg("compressor=quantize", "compressor.bits=2", f"pipeline_backend={name}",
                       f"compressor.eval_compressed={on}")
        backend, units, (x, y) = _trained(cfg)
        backend.train(False)
        r = backend.eval_step(x, y)
        with torch.no_grad():
            plain = float(F.cross_entropy(torch.nn.Sequential(*units)(x), y))
        losses[on] = (r.loss_sum / r.count, plain)
    assert losses[False][0] == pytest.approx(losses[False][1], rel=1e-6)
    assert abs(losses[True][0] - losses[True][1]) > 1e-5  # 2-bit codes at eval


def test_each_boundary_and_pass_follows_its_own_codec_in_process(make_cfg: Callable) -> None:
    """compressor.back overrides the back boundary; gradient_reuses_support=false sends the front
    gradient dense; the codecs are measured on all four boundary x pass pairs."""
    cfg = make_cfg("compressor=prune", "pipeline_backend=naive", "compressor.gradient_reuses_support=false",
                   "+compressor.back.activation._target_=edgesplit.codecs.Quantize",
                   "+compressor.back.activation.bits=4",
                   "+compressor.back.gradient._target_=edgesplit.codecs.Quantize",
                   "+compressor.back.gradient.bits=8")
    meter = _trained(cfg)[0].boundaries[0].meter
    s = meter.summary().to_dict()
    assert s["front_backward_bytes_per_batch"] > s["raw_front_backward_bytes_per_batch"]  # dense fp32
    assert s["front_forward_bytes_per_batch"] < 0.2 * s["raw_front_forward_bytes_per_batch"]
    raw = s["raw_back_forward_bytes_per_batch"]
    assert s["back_forward_bytes_per_batch"] == pytest.approx(raw / 8, rel=0.05)
    assert s["back_backward_bytes_per_batch"] == pytest.approx(s["raw_back_backward_bytes_per_batch"] / 4,
                                                               rel=0.05)
    for pair in ("front_forward", "front_backward", "back_forward", "back_backward"):
        assert f"{pair}_rel_error" in s, pair
