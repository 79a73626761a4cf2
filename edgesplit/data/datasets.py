"""The Datasets contract, bundled digits, synthetic data, and reproducible per-epoch loaders
(CIFAR in cifar.py, image folders in imagefolder.py, any other by `data._target_`)."""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset, SubsetRandomSampler, TensorDataset

from edgesplit.config import LOADER_KEYS, instantiate_target
from edgesplit.errors import ConfigError, DataError
from edgesplit.data.binary import binary_task
from edgesplit.data.resident import ResidentImages
from edgesplit.data.seeding import epoch_seed

DIGITS_TRAIN = 1437  # of 1797; the other 360 are the validation split
DIGITS_SPLIT_SEED = 0  # fixed: the digits split never depends on cfg.seed
SYNTHETIC_TRAIN, SYNTHETIC_VAL = 4096, 1024
SYNTHETIC_SEED = 1234
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)


@dataclass
class Datasets:
    """What a `data._target_` returns: the splits, the class count and one sample's input shape;
    `resident` (optional) makes the training set as tensors, for data.device=cuda (resident.py)."""
    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: Tuple[int, ...]  # (C, H, W) of one sample, for the model probe and stage balancing
    resident: Optional[Callable[[], ResidentImages]] = None

    def resident_train(self, device: str) -> ResidentImages:
        """The training set on `device` ('cpu_resident': the host), or a ConfigError for a
        dataset that offers no resident form (`resident` None)."""
        if self.resident is None:
            raise ConfigError(f"data.device={device!r}: this dataset keeps no resident form (its "
                              f"Datasets.resident is None; cifar10, cifar100, digits and synthetic "
                              f"do): allowed for it: cpu")
        return self.resident().to(torch.device("cpu" if device == "cpu_resident" else device))


def absolute_root(root: str) -> Path:
    """data.root relative to where the user started the program (Hydra may have changed the cwd)."""
    return Path(to_absolute_path(os.path.expanduser(root)))


# ----------------------------------------------------------------------------------------- digits
def digits(train_size: Optional[int] = None, val_size: Optional[int] = None,
           augment: Any = False) -> Datasets:
    """sklearn's 1797 8x8 digits in [0, 1], bilinear to 32x32, 3 channels, train-normalized.

    `augment` (data.augment, default false): true crops each training image at random, as the
    seed's CIFAR crop (torchvision's RandomCrop(32, padding=4); the padding is the background,
    raw 0), drawn afresh each epoch; "fixed" draws each sample's crop once from the seed and keeps
    it every epoch (build_loader's fixed_augment). No horizontal flip: a mirrored digit is another
    shape (a 2, 3, 7 or 9 flipped is no digit, a mirrored 5 looks like a 2). Validation is never
    augmented. The augmented set runs on the CPU loader only (data.device=cpu).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    train_idx, val_idx = perm[:DIGITS_TRAIN], perm[DIGITS_TRAIN:]
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    plain: Dataset = TensorDataset(x[train_idx], y[train_idx])
    # the background (raw 0) normalized: what the crop's padding fills in
    train_set = RandomCropped(plain, float(-mean / std)) if augment else plain

    def resident() -> ResidentImages:
        """The normalized float images themselves: the resident path does not crop them."""
        if augment:
            raise ConfigError(f"data.augment={str(augment).lower()} with data.device other than cpu: "
                              "digits' crop runs in the CPU loader only; use data.device=cpu or "
                              "data.augment=false")
        return ResidentImages(x[train_idx], y[train_idx]).first(train_size)

    train = first_n(train_set, train_size, "data.train_size", "digits train")
    return Datasets(train, first_n(TensorDataset(x[val_idx], y[val_idx]), val_size, "data.val_size",
                                   "digits val"),
                    NUM_CLASSES, IMAGE_SHAPE, resident)


class RandomCropped(Dataset):
    """(image, label) samples of `dataset` with the image padded by 4 (`fill`) and cropped back to
    its size at a random offset: torchvision's RandomCrop, drawn from the global torch RNG, which
    EpochSeeded seeds per (epoch seed, sample index)."""

    def __init__(self, dataset: Dataset, fill: float) -> None:
        import torchvision.transforms as T

        self.dataset = dataset
        self.crop = T.RandomCrop(IMAGE_SHAPE[1], padding=4, fill=fill)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Any]:
        image, label = self.dataset[index]
        return self.crop(image), label


# -------------------------------------------------------------------------------------- synthetic
class SyntheticImages(Dataset):
    """Sample i = N(0, 1) noise + the smooth pattern of its class, drawn from (seed, i) alone."""

    def __init__(self, size: int, seed: int, patterns: torch.Tensor) -> None:
        self.size, self.seed, self.patterns = size, seed, patterns

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} synthetic samples")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(NUM_CLASSES, (), generator=g))
        image = torch.randn(*IMAGE_SHAPE, generator=g) + self.patterns[label]
        return image, label


def synthetic(train_size: Optional[int] = None, val_size: Optional[int] = None) -> Datasets:
    """Generated at exactly train_size/val_size samples (null = 4096/1024); sample i is the same at
    any size."""
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    coarse = torch.randn(NUM_CLASSES, 3, 4, 4, generator=g)
    patterns = F.interpolate(coarse, size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False)
    train_n = SYNTHETIC_TRAIN if train_size is None else train_size
    val_n = SYNTHETIC_VAL if val_size is None else val_size
    train = SyntheticImages(train_n, SYNTHETIC_SEED + 1, patterns)
    return Datasets(train, SyntheticImages(val_n, SYNTHETIC_SEED + 2, patterns), NUM_CLASSES,
                    IMAGE_SHAPE, lambda: materialize(train))


def materialize(dataset: Dataset) -> ResidentImages:
    """Every (float image, label) sample of `dataset` stacked: the resident form of a set whose
    samples are drawn without augmentation (synthetic: each generated once, float32 [N, C, H, W])."""
    samples = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return ResidentImages(torch.stack([s[0] for s in samples]),
                          torch.tensor([int(s[1]) for s in samples], dtype=torch.int64))


# ------------------------------------------------------------------------------------------ build
def first_n(dataset: Dataset, n: Optional[int], key: str, what: str) -> Dataset:
    """The first `n` samples of `dataset` (null = all of them), for data.train_size / data.val_size."""
    if n is None:
        return dataset
    size = len(dataset)  # type: ignore[arg-type]
    if n > size:
        raise DataError(f"{key}={n} is out of range: the {what} split has {size} samples; "
                        f"use 1..{size}, or null for the whole split")
    return dataset if n == size else Subset(dataset, range(n))


def build_datasets(cfg: DictConfig) -> Datasets:
    """The Datasets of `data._target_`, called with the `data` keys but the trainer's (LOADER_KEYS),
    made a binary task where data.binary_classes or data.one_vs_rest asks (edgesplit.data.binary)."""
    spec = {key: cfg[key] for key in cfg if key not in LOADER_KEYS}  # a missing `name` is no error here
    datasets = instantiate_target(spec, "data._target_")
    if not isinstance(datasets, Datasets):
        raise ConfigError(f"data._target_={cfg._target_!r} must return edgesplit.data.datasets.Datasets, "
                          f"got {type(datasets).__name__}")
    classes = cfg.get("binary_classes")
    return binary_task(datasets, None if classes is None else list(classes), cfg.get("one_vs_rest"))


class EpochSeeded(Dataset):
    """Draws sample i's augmentation from a generator seeded by (epoch seed, i), and yields i
    after the sample's own items: the per-sample codec state is keyed by it.

    The global torch RNG is forked around each sample, so the augmentation is the same in the
    main process or any worker, for any number of workers, and the caller's RNG is untouched.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed (and leak into) CUDA's
            sample_seed = (self.seed + index * 0x9E3779B97F4A7C15) & (2**63 - 1)
            torch.default_generator.manual_seed(sample_seed)
            return (*self.dataset[index], index)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int, epoch: int,
                 num_workers: int, collate_fn: Optional[Callable[[Sequence[Any]], Any]] = None,
                 fixed_augment: bool = False, indices: Optional[Sequence[int]] = None) -> DataLoader:
    """Train: batches of (x, y, dataset indices), shuffled, augmented and batched as a function of
    (seed, epoch) only; last partial batch dropped. fixed_augment: each sample's crop and flip are
    drawn once from the seed and kept every epoch (data.augment=fixed), only the order changes.
    `indices` (train): only these samples, shuffled as a set of their size is (one client's share).
    Val: (x, y) in order, every sample. The sizes are range-checked by config.validate."""
    size = len(dataset) if indices is None else len(indices)  # type: ignore[arg-type]
    if train and size < batch_size:
        raise DataError(f"data.batch_size={batch_size} is larger than the training set "
                        f"({size} samples, see data.train_size): with the last partial batch "
                        "dropped no batch is left")
    s = epoch_seed(seed, epoch)
    generator = torch.Generator().manual_seed(s) if train else None
    # the same draws as shuffle=True's RandomSampler: one permutation of `size` from the generator
    subset = None if indices is None or not train else SubsetRandomSampler(indices, generator)
    return DataLoader(
        EpochSeeded(dataset, epoch_seed(seed, 0) if fixed_augment else s) if train else dataset,
        batch_size=batch_size,
        shuffle=train and subset is None,
        sampler=subset,
        drop_last=train,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_fn,
    )
