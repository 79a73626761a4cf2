"""Tests of edgesplit.data.datasets: CIFAR-10 on tiny real-format files, digits, synthetic, loaders."""
import hashlib
import pickle
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from torchvision.datasets import CIFAR10

from edgesplit.config import compose_config
from edgesplit.data.cifar import CIFAR_MEAN, CIFAR_STD
from edgesplit.data.datasets import build_datasets, build_loader
from edgesplit.errors import DataError

N_PER_BATCH, N_TEST = 4, 6  # 5 train batches -> 20 train images


def _cfg(option: str, **keys: Any) -> DictConfig:
    """The `data` node of the data=option that train.py would get, with these keys set."""
    def value(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return compose_config([f"data={option}", *(f"data.{k}={value(v)}" for k, v in keys.items())]).data


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    # The real files are Python 2 pickles; torchvision loads them with encoding="latin1", which
    # turns their str keys into Python 3 str ('data', 'labels'), so str keys are the faithful form.
    entry = {"batch_label": path.name, "labels": labels,
             # uint8 [N, 3072], each row CHW
             "data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
             "filenames": [f"{path.name}_{i}.png" for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


@pytest.fixture
def data_tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A 20/6-image CIFAR-10 in the on-disk format under tmp_path/cifar.

    torchvision checks every file against the md5s in CIFAR10.train_list/test_list/meta. Instead
    of weakening that check, the test points those class attributes (monkeypatch restores them)
    at the md5s of the files written here, so the unchanged check runs and passes.
    """
    rng = np.random.RandomState(0)
    root = tmp_path / "cifar"
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    train_x = rng.randint(0, 256, size=(5 * N_PER_BATCH, 32, 32, 3), dtype=np.uint8)
    train_y = rng.randint(0, 10, size=5 * N_PER_BATCH).tolist()
    test_x = rng.randint(0, 256, size=(N_TEST, 32, 32, 3), dtype=np.uint8)
    test_y = rng.randint(0, 10, size=N_TEST).tolist()
    train_list = []
    for b in range(5):
        sl = slice(b * N_PER_BATCH, (b + 1) * N_PER_BATCH)
        path = folder / f"data_batch_{b + 1}"
        _write_batch(path, train_x[sl], train_y[sl])
        train_list.append([path.name, _md5(path)])
    _write_batch(folder / "test_batch", test_x, test_y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)],
                     "num_cases_per_batch": N_PER_BATCH, "num_vis": 3072}, f, protocol=2)
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(folder / "batches.meta")})
    return {"root": root, "train_x": train_x, "train_y": train_y,
            "test_x": test_x, "test_y": test_y}


def _normalized(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    x = x * torch.tensor(CIFAR_STD)[:, None, None] + torch.tensor(CIFAR_MEAN)[:, None, None]
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0)


# ------------------------------------------------------------------------------------- CIFAR-10
def test_cifar10_reads_the_pixels_and_labels_written(data_tiny_cifar: dict[str, Any]) -> None:
    ds = build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False,
                             augment=False))
    sizes = (len(ds.train), len(ds.val), ds.num_classes)  # type: ignore[arg-type]
    assert sizes == (20, N_TEST, 10) and ds.input_shape == (3, 32, 32)
    for i in range(20):
        x, y = ds.train[i]
        assert y == data_tiny_cifar["train_y"][i]
        torch.testing.assert_close(x, _normalized(data_tiny_cifar["train_x"][i]), rtol=0, atol=1e-6)
        assert torch.equal(_to_uint8(x), torch.from_numpy(data_tiny_cifar["train_x"][i]))
    x, y = ds.val[N_TEST - 1]
    assert y == data_tiny_cifar["test_y"][-1]
    assert torch.equal(_to_uint8(x), torch.from_numpy(data_tiny_cifar["test_x"][-1]))


def test_cifar10_augmentation_crops_and_flips_train_only(data_tiny_cifar: dict[str, Any]) -> None:
    ds = build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False))
    zero = _normalized(np.zeros((32, 32, 3), dtype=np.uint8))[:, 0, 0]  # a padded pixel
    changed, padded = 0, 0
    for i in range(20):
        torch.manual_seed(i)
        x, _ = ds.train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        plain = _normalized(data_tiny_cifar["train_x"][i])
        changed += not torch.equal(x, plain)
        padded += bool((x == zero[:, None, None]).all(0).any())
    assert changed >= 15 and padded >= 10  # random crops of a 4-padded image mostly show padding
    torch.testing.assert_close(ds.val[0][0], _normalized(data_tiny_cifar["test_x"][0]),
                               rtol=0, atol=1e-6)


def test_cifar10_train_loader_drops_the_last_partial_batch(data_tiny_cifar: dict[str, Any]) -> None:
    ds = build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False))
    train = build_loader(ds.train, 8, train=True, seed=0, epoch=0, num_workers=0)
    assert [len(y) for _, y, _ in train] == [8, 8]
    val = build_loader(ds.val, 4, train=False, seed=0, epoch=0, num_workers=0)
    labels = [y for _, y in val]
    assert [len(y) for y in labels] == [4, 2]
    assert torch.cat(labels).tolist() == data_tiny_cifar["test_y"]  # val keeps the file order


def test_cifar10_missing_gives_one_line_with_path_and_ways_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        build_datasets(_cfg("cifar10", root="data", download=False))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"CIFAR-10 not found under {tmp_path / 'data'} (data.root)" in msg
    assert "data.download=true" in msg and "data.root=DIR" in msg and "data=digits" in msg


def test_cifar10_failed_download_gives_one_line_data_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # torchvision's download_url -> urllib.request.urlopen: the real download path, offline
    monkeypatch.setattr("torchvision.datasets.utils.urllib.request.urlopen", offline)
    with pytest.raises(DataError) as err:
        build_datasets(_cfg("cifar10", root=str(tmp_path / "d"), download=True))
    msg = str(err.value)
    assert calls, "torchvision's download was not attempted"
    assert "\n" not in msg
    assert f"download into {tmp_path / 'd'} (data.root) failed" in msg
    assert "URLError" in msg and "name resolution" in msg
    assert "data.download=false" in msg and "data=digits" in msg


def test_cifar10_corrupt_file_is_named(data_tiny_cifar: dict[str, Any]) -> None:
    path = data_tiny_cifar["root"] / CIFAR10.base_folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError) as err:
        build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False))
    assert f"file {path} is corrupt (md5 mismatch" in str(err.value)
    assert "data.download=true" in str(err.value)


def test_cifar10_real_md5s_reject_the_tiny_files(data_tiny_cifar: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # torchvision's own md5s: the production check is not weakened
    with pytest.raises(DataError, match="data_batch_1 is corrupt"):
        build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False))


def test_cifar10_sizes_take_the_first_n(data_tiny_cifar: dict[str, Any]) -> None:
    ds = build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False,
                             augment=False, train_size=5, val_size=3))
    assert (len(ds.train), len(ds.val)) == (5, 3)  # type: ignore[arg-type]
    assert [ds.train[i][1] for i in range(5)] == data_tiny_cifar["train_y"][:5]
    with pytest.raises(DataError, match=r"data.train_size=21 is out of range: "
                                        r"the cifar10 train split has 20 samples"):
        build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False,
                            train_size=21))


# --------------------------------------------------------------------------------------- digits
def test_digits_sizes_shapes_and_normalization() -> None:
    ds = build_datasets(_cfg("digits"))
    assert (len(ds.train), len(ds.val), ds.num_classes) == (1437, 360, 10)  # type: ignore[arg-type]
    assert ds.input_shape == (3, 32, 32)
    x, y = ds.train.tensors  # type: ignore[attr-defined]
    assert x.shape == (1437, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4
    # the documented recipe, recomputed: /16, bilinear 8->32, split by randperm(seed 0), train stats
    from sklearn.datasets import load_digits
    bunch = load_digits()
    raw = torch.nn.functional.interpolate(
        torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16, size=(32, 32),
        mode="bilinear", align_corners=False)
    assert raw.min() == 0 and raw.max() <= 1
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    train_raw = raw[perm[:1437]]
    expected = (train_raw - train_raw.mean()) / train_raw.std()
    torch.testing.assert_close(x[:, 0:1], expected, rtol=0, atol=1e-5)
    assert torch.equal(y, torch.as_tensor(bunch.target)[perm[:1437]])
    assert sorted(set(y.tolist())) == list(range(10))


def test_digits_split_is_fixed_and_covers_every_sample() -> None:
    from sklearn.datasets import load_digits

    torch.manual_seed(123)
    a = build_datasets(_cfg("digits"))
    torch.manual_seed(456)
    b = build_datasets(_cfg("digits"))
    for part in ("train", "val"):
        for ta, tb in zip(getattr(a, part).tensors, getattr(b, part).tensors):
            assert torch.equal(ta, tb)
    labels = torch.cat([a.train.tensors[1], a.val.tensors[1]])  # type: ignore[attr-defined]
    assert torch.bincount(labels).tolist() == np.bincount(load_digits().target).tolist()


def test_digits_train_size_limits() -> None:
    full = build_datasets(_cfg("digits"))
    ds = build_datasets(_cfg("digits", train_size=100, val_size=50))
    assert (len(ds.train), len(ds.val)) == (100, 50)  # type: ignore[arg-type]
    assert torch.equal(ds.train[99][0], full.train[99][0])
    with pytest.raises(DataError) as err:
        build_datasets(_cfg("digits", train_size=2000))
    assert "data.train_size=2000" in str(err.value) and "1437 samples" in str(err.value)
    with pytest.raises(DataError, match="data.val_size=361 .* 360 samples"):
        build_datasets(_cfg("digits", val_size=361))


def _digits_by_sample(ds: Any, epoch: int, fixed: bool) -> dict[int, torch.Tensor]:
    loader = build_loader(ds.train, 64, train=True, seed=5, epoch=epoch, num_workers=0,
                          fixed_augment=fixed)
    return {i: row for x, _, ids in loader for row, i in zip(x, ids.tolist())}


def test_digits_without_augmentation_are_the_old_tensors_exactly() -> None:
    """data.augment defaults to false and then gives, bit for bit, what digits gave before it
    had the key: the old code's operations, repeated here."""
    from sklearn.datasets import load_digits

    assert compose_config(["data=digits"]).data.augment is False
    ds = build_datasets(_cfg("digits"))
    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear",
                                        align_corners=False).repeat(1, 3, 1, 1)
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    train_idx, val_idx = perm[:1437], perm[1437:]
    x = (x - x[train_idx].mean()) / x[train_idx].std()
    assert torch.equal(ds.train.tensors[0], x[train_idx])  # type: ignore[attr-defined]
    assert torch.equal(ds.val.tensors[0], x[val_idx])  # type: ignore[attr-defined]
    loaded = _digits_by_sample(ds, 1, False)  # the loader hands out the images as they are
    assert all(torch.equal(row, x[train_idx][i]) for i, row in loaded.items())


def _shifts(image: torch.Tensor, fill: float) -> list[torch.Tensor]:
    """Every crop RandomCrop(32, padding=4, fill) can make of `image`, unflipped."""
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4), value=fill)
    return [padded[:, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]


def test_digits_augment_true_crops_each_sample_afresh_every_epoch() -> None:
    plain = build_datasets(_cfg("digits")).train
    ds = build_datasets(_cfg("digits", augment=True))
    assert torch.equal(ds.val.tensors[0], build_datasets(_cfg("digits")).val.tensors[0])  # type: ignore
    a, b = _digits_by_sample(ds, 0, False), _digits_by_sample(ds, 1, False)
    shared = sorted(a.keys() & b.keys())
    assert len(shared) > 1300
    changed = sum(not torch.equal(a[i], b[i]) for i in shared)
    assert changed > 0.9 * len(shared)  # 80 of 81 offsets differ from a given one
    fill = float(plain[0][0].min())  # the background (raw 0), normalized
    for i in shared[:50]:  # each is a crop of its own image, padded with the background, no flip
        assert any(torch.equal(a[i], crop) for crop in _shifts(plain[i][0], fill))
        assert not torch.equal(a[i], plain[i][0].flip(-1))


def test_digits_augment_fixed_keeps_each_samples_crop_every_epoch() -> None:
    plain = build_datasets(_cfg("digits")).train
    ds = build_datasets(_cfg("digits", augment="fixed"))
    epochs = [_digits_by_sample(ds, epoch, True) for epoch in (0, 1, 2)]
    shared = sorted(epochs[0].keys() & epochs[1].keys() & epochs[2].keys())
    assert len(shared) > 1200
    assert all(torch.equal(epochs[0][i], epochs[e][i]) for i in shared for e in (1, 2))
    cropped = sum(not torch.equal(epochs[0][i], plain[i][0]) for i in shared)
    assert cropped > 0.9 * len(shared)  # 1 in 81 crops is the image itself


def test_augmented_digits_have_no_resident_form() -> None:
    from edgesplit.errors import ConfigError

    for augment in (True, "fixed"):
        ds = build_datasets(_cfg("digits", augment=augment))
        with pytest.raises(ConfigError) as err:
            ds.resident_train("cpu_resident")
        msg = str(err.value)
        assert "data.augment" in msg and "data.device" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_deterministic_and_sized() -> None:
    a = build_datasets(_cfg("synthetic"))
    assert (len(a.train), len(a.val), a.num_classes) == (4096, 1024, 10)  # type: ignore[arg-type]
    torch.manual_seed(99)
    b = build_datasets(_cfg("synthetic", train_size=10, val_size=7))
    assert (len(b.train), len(b.val)) == (10, 7)  # type: ignore[arg-type]
    for i in (0, 9):
        assert torch.equal(a.train[i][0], b.train[i][0]) and a.train[i][1] == b.train[i][1]
    assert not torch.equal(a.train[0][0], a.val[0][0])
    assert a.train[0][0].shape == a.input_shape == (3, 32, 32)
    with pytest.raises(IndexError):
        b.train[10]


def test_synthetic_classes_are_learnable() -> None:
    ds = build_datasets(_cfg("synthetic", train_size=1000, val_size=300))
    xs, ys = zip(*(ds.train[i] for i in range(1000)))
    x, y = torch.stack(xs).flatten(1), torch.tensor(ys)
    assert torch.bincount(y, minlength=10).min() > 60  # every class present
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    vx, vy = zip(*(ds.val[i] for i in range(300)))
    pred = torch.cdist(torch.stack(vx).flatten(1), means).argmin(1)
    assert (pred == torch.tensor(vy)).float().mean() > 0.9  # nearest class mean separates them


# -------------------------------------------------------------------------------------- loaders
def _batches(loader: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y, _ in loader]


def test_loader_order_and_augmentation_depend_on_seed_and_epoch_only(
        data_tiny_cifar: dict[str, Any]) -> None:
    ds = build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False))
    state = torch.get_rng_state()
    a = _batches(build_loader(ds.train, 4, train=True, seed=7, epoch=3, num_workers=0))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    torch.manual_seed(1)
    # "what ran before": another epoch and a reseeded global RNG
    _batches(build_loader(ds.train, 4, train=True, seed=7, epoch=2, num_workers=0))
    b = _batches(build_loader(ds.train, 4, train=True, seed=7, epoch=3, num_workers=0))
    assert len(a) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = _batches(build_loader(ds.train, 4, train=True, seed=7, epoch=4, num_workers=0))
    assert torch.cat([y for _, y in other]).tolist() != torch.cat([y for _, y in a]).tolist() or \
        not torch.equal(other[0][0], a[0][0])
    order_a = torch.cat([y for _, y in a])
    assert sorted(order_a.tolist()) == sorted(data_tiny_cifar["train_y"])  # a permutation


def test_loader_is_the_same_in_worker_processes(data_tiny_cifar: dict[str, Any]) -> None:
    ds = build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False))
    a = _batches(build_loader(ds.train, 4, train=True, seed=1, epoch=0, num_workers=0))
    b = _batches(build_loader(ds.train, 4, train=True, seed=1, epoch=0, num_workers=2))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_epochs_shuffle_differently() -> None:
    ds = build_datasets(_cfg("synthetic", train_size=64, val_size=16))
    orders = []
    for epoch in (0, 1):
        loader = build_loader(ds.train, 16, train=True, seed=0, epoch=epoch, num_workers=0)
        orders.append(torch.cat([x[:, 0, 0, 0] for x, _, _ in loader]))
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[0].sort().values, orders[1].sort().values)
    val = build_loader(ds.val, 5, train=False, seed=0, epoch=0, num_workers=0)
    assert [len(y) for _, y in val] == [5, 5, 5, 1]
    assert not val.pin_memory or torch.cuda.is_available()


def test_train_batches_carry_the_dataset_index_of_each_sample() -> None:
    ds = build_datasets(_cfg("synthetic", train_size=64, val_size=16))
    seen = []
    for x, y, ids in build_loader(ds.train, 16, train=True, seed=3, epoch=1, num_workers=0):
        for row, label, i in zip(x, y, ids.tolist()):
            image, target = ds.train[i]  # synthetic data has no augmentation
            assert torch.equal(row, image) and int(label) == target
        seen += ids.tolist()
    assert sorted(seen) == list(range(64))


def test_fixed_augmentation_keeps_each_samples_crop_and_flip_every_epoch(
        data_tiny_cifar: dict[str, Any]) -> None:
    ds = build_datasets(_cfg("cifar10", root=str(data_tiny_cifar["root"]), download=False))

    def by_sample(epoch: int, fixed: bool) -> dict[int, torch.Tensor]:
        loader = build_loader(ds.train, 4, train=True, seed=5, epoch=epoch, num_workers=0,
                              fixed_augment=fixed)
        return {i: row for x, _, ids in loader for row, i in zip(x, ids.tolist())}

    fixed = [by_sample(epoch, True) for epoch in (0, 1, 2)]
    fresh = [by_sample(epoch, False) for epoch in (0, 1)]
    shared = fixed[0].keys() & fixed[1].keys() & fixed[2].keys()
    assert len(shared) >= 10
    assert all(torch.equal(fixed[0][i], fixed[e][i]) for i in shared for e in (1, 2))
    assert any(not torch.equal(fresh[0][i], fresh[1][i]) for i in fresh[0].keys() & fresh[1].keys())


def test_a_batch_larger_than_the_training_set_is_a_data_error() -> None:
    ds = build_datasets(_cfg("synthetic", train_size=10, val_size=4))
    with pytest.raises(DataError, match="data.batch_size=16 is larger than the training set"):
        build_loader(ds.train, 16, train=True, seed=0, epoch=0, num_workers=0)
    assert len(build_loader(ds.val, 16, train=False, seed=0, epoch=0, num_workers=0)) == 1


# ------------------------------------------------------------------------------------ CIFAR-100
@pytest.fixture
def data_tiny_cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A 30/10-image CIFAR-100 in the on-disk format (one `train` and one `test` pickle with
    `fine_labels`, and `meta`), torchvision's md5 table pointed at these files."""
    from torchvision.datasets import CIFAR100
    rng = np.random.RandomState(1)
    root = tmp_path / "cifar100"
    folder = root / CIFAR100.base_folder
    folder.mkdir(parents=True)
    out: dict[str, Any] = {"root": root}
    for split, n in (("train", 30), ("test", 10)):
        images = rng.randint(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.randint(0, 100, size=n).tolist()
        entry = {"filenames": [f"{split}_{i}.png" for i in range(n)], "fine_labels": labels,
                 "coarse_labels": [y // 5 for y in labels],
                 "data": images.transpose(0, 3, 1, 2).reshape(n, 3072)}
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        out[f"{split}_x"], out[f"{split}_y"] = images, labels
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f, protocol=2)
    monkeypatch.setattr(CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": _md5(folder / "meta")})
    return out


def test_cifar100_reads_100_classes_the_pixels_and_fine_labels(data_tiny_cifar100: dict[str, Any]) -> None:
    from edgesplit.data.cifar import CIFAR100_MEAN, CIFAR100_STD
    ds = build_datasets(_cfg("cifar100", root=str(data_tiny_cifar100["root"]), download=False,
                             augment=False))
    assert (len(ds.train), len(ds.val), ds.num_classes) == (30, 10, 100)  # type: ignore[arg-type]
    mean, std = torch.tensor(CIFAR100_MEAN)[:, None, None], torch.tensor(CIFAR100_STD)[:, None, None]
    for i in (0, 29):
        x, y = ds.train[i]
        pixels = torch.from_numpy(data_tiny_cifar100["train_x"][i]).permute(2, 0, 1).float() / 255
        assert y == data_tiny_cifar100["train_y"][i]
        torch.testing.assert_close(x, (pixels - mean) / std, rtol=0, atol=1e-6)
    assert ds.val[9][1] == data_tiny_cifar100["test_y"][9]


def test_cifar100_missing_names_cifar100_and_its_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-100 not found under .*empty \(data.root\); "
                                        r"set data.download=true"):
        build_datasets(_cfg("cifar100", root=str(tmp_path / "empty"), download=False))


def test_cifar100_trains_a_resnet18(data_tiny_cifar100: dict[str, Any], tmp_path: Path) -> None:
    """Through the trainer (in-process: the md5 table above is this process's), split ResNet-18."""
    from edgesplit.run import trainer
    cfg = compose_config(["data=cifar100", f"data.root={data_tiny_cifar100['root']}", "data.download=false",
                          "data.batch_size=10", "model=resnet18", "model.width=0.125",
                          "partition.front=2", "partition.back=2", "pipeline_backend=gpipe",
                          "pipeline_backend.chunks=2", "compressor=quantize", "schedule.epochs=2",
                          "schedule.warmup_epochs=1", "schedule.lr=0.05", "threads=1"])
    summary = trainer.run(cfg, tmp_path / "run", [])
    from edgesplit.run import checkpoint
    saved = checkpoint.load(tmp_path / "run" / checkpoint.NAME)["config"]  # the classes the data gave
    assert summary["status"] == "finished" and saved["model"]["num_classes"] == 100
    assert summary["history"][1]["train_loss"] < summary["history"][0]["train_loss"]
    assert summary["comm"]["up_bytes_per_batch"] > 0
