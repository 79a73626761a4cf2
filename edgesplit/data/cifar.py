"""CIFAR-10 and CIFAR-100 through torchvision: download or a clear error, md5-checked, augmented."""
import logging
import urllib.error
from pathlib import Path
from typing import Optional, Tuple, Type

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from edgesplit.data.datasets import IMAGE_SHAPE, Datasets, absolute_root, first_n
from edgesplit.errors import DataError
from edgesplit.data.resident import ResidentImages

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_WAYS_OUT = "data.root=DIR to point at a copy, or data=digits to train on bundled data"
log = logging.getLogger(__name__)


def _problem(cls: Type[CIFAR10], root: Path, verify: bool = True) -> Optional[str]:
    """None when every file of the dataset is present with torchvision's md5 (with `verify` off:
    present); else what is wrong."""
    from torchvision.datasets.utils import check_integrity

    folder = root / cls.base_folder
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    if any(not (folder / name).is_file() for name, _ in files):
        return f"not found under {root} (data.root)"
    if not verify:
        log.warning(f"{folder}: md5 check of the files switched off (data.verify=false)")
        return None
    for name, md5 in files:
        if not check_integrity(str(folder / name), md5):
            return f"file {folder / name} is corrupt (md5 mismatch; data.root={root})"
    return None


def _unverified(cls: Type[CIFAR10]) -> Type[CIFAR10]:
    """cls whose files have no md5 (torchvision's check_integrity then only checks that they exist)."""
    return type(f"{cls.__name__}Unverified", (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None}})


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _cifar(cls: Type[CIFAR10], label: str, stats: Tuple[Tuple[float, ...], Tuple[float, ...]],
           root: str, download: bool, augment: bool, train_size: Optional[int],
           val_size: Optional[int], verify: bool = True) -> Datasets:
    import torchvision.transforms as T

    path = absolute_root(root)
    problem = _problem(cls, path, verify)
    if problem is not None and not download:
        fix = "delete it and set data.download=true to fetch it again" if "corrupt" in problem \
            else "set data.download=true to fetch it"
        raise DataError(f"{label} {problem}; {fix}, {_WAYS_OUT}")
    if problem is not None:
        # the test split is the smaller one; loading it downloads, extracts and checks all files
        try:
            cls(str(path), train=False, download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise DataError(
                f"{label} download into {path} (data.root) failed ({_one_line(exc)}); "
                f"check the network, or copy {cls.base_folder} into it and set "
                f"data.download=false, {_WAYS_OUT}") from exc
        problem = _problem(cls, path)
        if problem is not None:
            raise DataError(f"{label} {problem} after downloading; delete it and retry, {_WAYS_OUT}")

    normalize = [T.ToTensor(), T.Normalize(*stats)]
    crop_flip = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    reader = cls if verify else _unverified(cls)
    try:
        train = reader(str(path), train=True, download=False, transform=T.Compose(crop_flip + normalize))
        val = reader(str(path), train=False, download=False, transform=T.Compose(normalize))
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(f"{label} under {path} (data.root) cannot be read ({_one_line(exc)}); "
                        f"set data.download=true to fetch it again, {_WAYS_OUT}") from exc
    name = label.lower().replace("-", "")

    def resident() -> ResidentImages:
        """The raw uint8 arrays [N, 32, 32, 3], cropped, flipped and normalized per batch."""
        return ResidentImages(torch.from_numpy(train.data), torch.tensor(train.targets, dtype=torch.int64),
                              *stats, augment=bool(augment)).first(train_size)

    return Datasets(first_n(train, train_size, "data.train_size", f"{name} train"),
                    first_n(val, val_size, "data.val_size", f"{name} val"), len(train.classes),
                    IMAGE_SHAPE, resident)


def cifar10(root: str, download: bool, augment: bool, train_size: Optional[int] = None,
            val_size: Optional[int] = None, verify: bool = True) -> Datasets:
    """torchvision's CIFAR-10 under `root`, the seed's augmentation (crop 32 pad 4, flip) when `augment`.
    `verify=False` (`+data.verify=false`) skips the md5 check of the files: for files in the
    on-disk format that are not the real ones (the epoch benchmark's generated images)."""
    return _cifar(CIFAR10, "CIFAR-10", (CIFAR_MEAN, CIFAR_STD), root, download, augment,
                  train_size, val_size, verify)


def cifar100(root: str, download: bool, augment: bool, train_size: Optional[int] = None,
             val_size: Optional[int] = None, verify: bool = True) -> Datasets:
    """torchvision's CIFAR-100 (100 fine labels) under `root`, the same contract as cifar10."""
    return _cifar(CIFAR100, "CIFAR-100", (CIFAR100_MEAN, CIFAR100_STD), root, download, augment,
                  train_size, val_size, verify)
