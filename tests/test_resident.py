"""data.device: the training set resident on a device, augmented there per batch (run here on the
host: data.device=cpu_resident is the same code), and each epoch's data time."""
from pathlib import Path
from typing import Any, Callable, List

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from edgesplit.run import trainer
from edgesplit.data.cifar import CIFAR_MEAN, CIFAR_STD
from edgesplit.data.datasets import Datasets, build_datasets, build_loader
from edgesplit.data.seeding import epoch_seed
from edgesplit.errors import ConfigError
from edgesplit.data.resident import PAD, ResidentLoader, draws
from tests.test_data import _cfg, data_tiny_cifar  # noqa: F401 (a fixture)


def _cifar(tiny: dict, augment: Any) -> Datasets:
    return build_datasets(_cfg("cifar10", root=str(tiny["root"]), download=False, augment=augment))


def _batches(loader: Any) -> List[tuple]:
    return [tuple(t.cpu() for t in batch) for batch in loader]


def _candidates(image: torch.Tensor) -> torch.Tensor:
    """Every crop (offsets 0..2*PAD) and flip of a uint8 HWC image, normalized: [162, 3, 32, 32]."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    padded = F.pad(x, (PAD, PAD, PAD, PAD), value=0.0)
    zero = ((torch.zeros(3) - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)).view(3, 1, 1)
    padded = torch.where(F.pad(torch.ones_like(x), (PAD, PAD, PAD, PAD)) > 0, padded, zero)
    crops = [padded[:, r:r + 32, c:c + 32] for r in range(2 * PAD + 1) for c in range(2 * PAD + 1)]
    return torch.stack(crops + [crop.flip(-1) for crop in crops])


def test_without_augmentation_it_yields_the_cpu_loaders_batches(
        data_tiny_cifar: dict) -> None:  # noqa: F811
    ds = _cifar(data_tiny_cifar, False)
    resident = ds.resident_train("cpu_resident")
    assert resident.images.dtype == torch.uint8 and tuple(resident.images.shape) == (20, 32, 32, 3)
    for epoch in (0, 1):
        cpu = _batches(build_loader(ds.train, 6, train=True, seed=3, epoch=epoch, num_workers=0))
        got = _batches(ResidentLoader(resident, 6, seed=3, epoch=epoch))
        assert len(got) == len(cpu) == 3  # the last partial batch dropped
        for (x, y, ids), (cx, cy, cids) in zip(got, cpu):
            assert torch.equal(ids, cids) and torch.equal(y, cy)
            torch.testing.assert_close(x, cx, rtol=0, atol=1e-6)
            assert x.is_contiguous()


def test_augmentation_crops_and_flips_each_sample_reproducibly(data_tiny_cifar: dict) -> None:  # noqa: F811
    ds = _cifar(data_tiny_cifar, True)
    resident = ds.resident_train("cpu_resident")
    loader = ResidentLoader(resident, 5, seed=3, epoch=0, channels_last=True)
    first = _batches(loader)
    cpu = _batches(build_loader(ds.train, 5, train=True, seed=3, epoch=0, num_workers=0))
    assert [b[2].tolist() for b in first] == [b[2].tolist() for b in cpu]  # the same order
    rows, cols, flips = draws(loader.draw_seed, torch.arange(20))
    for x, _, ids in first:
        assert x.is_contiguous(memory_format=torch.channels_last)
        for sample, i in zip(x, ids):
            # the crop and flip its draws name, of its own image, normalized as torchvision does
            distance = (_candidates(data_tiny_cifar["train_x"][int(i)]) - sample).abs().flatten(1).amax(1)
            assert float(distance.min()) < 1e-5
            assert int(distance.argmin()) == int(flips[i]) * 81 + int(rows[i]) * 9 + int(cols[i])
    assert len(set(rows.tolist())) > 3 and len(set(cols.tolist())) > 3 and 0 < int(flips.sum()) < 20
    again = _batches(ResidentLoader(resident, 5, seed=3, epoch=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # a function of (seed, epoch)
    other = _batches(ResidentLoader(resident, 5, seed=3, epoch=1))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_fixed_augmentation_keeps_each_samples_crop_and_flip_every_epoch(
        data_tiny_cifar: dict) -> None:  # noqa: F811
    resident = _cifar(data_tiny_cifar, "fixed").resident_train("cpu_resident")

    def by_sample(epoch: int) -> dict:
        loader = ResidentLoader(resident, 4, seed=5, epoch=epoch, fixed_augment=True)
        return {int(i): x for batch, _, ids in loader for x, i in zip(batch, ids)}
    e0, e1 = by_sample(0), by_sample(1)
    assert sorted(e0) == sorted(e1) == list(range(20))
    assert all(torch.equal(e0[i], e1[i]) for i in e0)
    loose = ResidentLoader(resident, 4, seed=5, epoch=1)
    assert not all(torch.equal(e0[int(i)], x) for batch, _, ids in loose for x, i in zip(batch, ids))


def test_draws_depend_on_the_seed_and_the_sample_alone() -> None:
    ids = torch.arange(4096)
    rows, cols, flip = draws(7, ids)
    assert int(rows.min()) == int(cols.min()) == 0 and int(rows.max()) == int(cols.max()) == 2 * PAD
    assert 0.45 < float(flip.float().mean()) < 0.55
    counts = torch.bincount(rows, minlength=2 * PAD + 1).float() / len(ids)
    assert float(counts.min()) > 0.08 and float(counts.max()) < 0.14  # about 1/9 each
    shuffled = torch.randperm(4096)
    assert all(torch.equal(a[shuffled], b) for a, b in zip((rows, cols, flip), draws(7, shuffled)))
    assert not torch.equal(draws(8, ids)[0], rows)


@pytest.mark.parametrize("option", ["digits", "synthetic"])
def test_digits_and_synthetic_stay_float_and_give_the_cpu_batches(option: str) -> None:
    ds = build_datasets(_cfg(option, train_size=96))
    resident = ds.resident_train("cpu_resident")
    assert resident.images.dtype == torch.float32 and len(resident) == 96
    cpu = _batches(build_loader(ds.train, 32, train=True, seed=1, epoch=2, num_workers=0))
    got = _batches(ResidentLoader(resident, 32, seed=1, epoch=2))
    assert len(got) == 3
    for a, b in zip(got, cpu):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_a_dataset_without_a_resident_form_names_the_key() -> None:
    ds = build_datasets(_cfg("digits"))
    ds.resident = None  # as a custom dataset or imagefolder
    with pytest.raises(ConfigError, match="data.device='cpu_resident': .* allowed for it: cpu"):
        ds.resident_train("cpu_resident")


def test_a_run_on_resident_data_records_each_epochs_data_time(make_cfg: Callable, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    made: List[ResidentLoader] = []

    class Spy(ResidentLoader):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)
    monkeypatch.setattr(trainer, "ResidentLoader", Spy)
    summary = trainer.run(make_cfg("pipeline_backend=naive", "data.device=cpu_resident"), tmp_path, [])
    assert summary["status"] == "finished"
    assert [loader.order_seed for loader in made] == [epoch_seed(0, 0), epoch_seed(0, 1)]  # per epoch
    data_s = [h["data_s"] for h in summary["history"]]
    assert len(data_s) == 2 and all(0 < s < 60 for s in data_s)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = events.Scalars("time/data_s")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx(data_s, rel=1e-6)
    assert "data_s" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
