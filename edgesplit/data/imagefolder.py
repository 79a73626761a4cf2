"""A user's images in class folders (torchvision's ImageFolder), resized, split, augmented."""
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
import torchvision.transforms as T
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from edgesplit.data.datasets import Datasets, absolute_root, first_n
from edgesplit.errors import DataError

SPLIT_SEED = 0  # fixed: the train/val split never depends on cfg.seed
LAYOUT = ("ROOT/<class>/<image> (split by data.val_fraction), or ROOT/train/<class>/<image> "
          "and ROOT/val/<class>/<image>")


def _folder(path: Path, transform: Callable) -> ImageFolder:
    try:
        return ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"image folder {path} (data.root) holds no usable images ({reason}); "
                        f"expected {LAYOUT}") from None


def _split(n: int, val_fraction: float) -> Tuple[List[int], List[int]]:
    """A fixed random split of n images: (train indices, val indices)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(f"data.val_fraction={val_fraction} leaves no training image of the {n} "
                        f"in the image folder")
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def imagefolder(root: str, image_size: int = 32, val_fraction: float = 0.2, augment: bool = True,
                train_size: Optional[int] = None, val_size: Optional[int] = None) -> Datasets:
    """RGB images resized to image_size x image_size and normalized to [-1, 1]; training images
    get a random crop (padding image_size/8) and a flip when `augment`. Classes are the folder
    names, in sorted order (torchvision's)."""
    path = absolute_root(root)
    if not path.is_dir():
        raise DataError(f"image folder {path} (data.root) does not exist; expected {LAYOUT}")
    resize = [T.Resize((image_size, image_size))]
    normalize = [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    crop_flip = ([T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()]
                 if augment else [])
    train_tf, val_tf = T.Compose(resize + crop_flip + normalize), T.Compose(resize + normalize)
    if (path / "train").is_dir() and (path / "val").is_dir():
        train, val = _folder(path / "train", train_tf), _folder(path / "val", val_tf)
        if train.classes != val.classes:
            raise DataError(f"image folder {path}: train/ and val/ hold different class folders "
                            f"({train.classes} vs {val.classes})")
        classes = train.classes
        splits = (train, val)
    else:
        augmented, plain = _folder(path, train_tf), _folder(path, val_tf)
        classes = augmented.classes
        train_idx, val_idx = _split(len(augmented), val_fraction)
        splits = (Subset(augmented, train_idx), Subset(plain, val_idx))
    return Datasets(first_n(splits[0], train_size, "data.train_size", "imagefolder train"),
                    first_n(splits[1], val_size, "data.val_size", "imagefolder val"), len(classes),
                    (3, image_size, image_size))
