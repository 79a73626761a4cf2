"""Binary tasks of any dataset: data.binary_classes (two of its labels kept, relabelled 0 and 1) and
data.one_vs_rest (one label as 1, every other as 0, every sample kept)."""
from typing import Any, List, Optional, Sequence, Sized, Tuple, cast

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from edgesplit.data.resident import ResidentImages
from edgesplit.errors import ConfigError, DataError


def labels_of(dataset: Dataset) -> Tensor:
    """Every sample's label, in order: read from the tensors or `targets` where a dataset keeps
    them, else by loading each sample (the global RNG kept: a random transform draws from it)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long()
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets, dtype=torch.int64)
    with torch.random.fork_rng(devices=[]):
        return torch.tensor([int(dataset[i][1]) for i in range(len(cast(Sized, dataset)))])


class TwoClasses(Dataset):
    """The samples of `dataset` at `indices`, label `second` as 1 and any other as 0."""

    def __init__(self, dataset: Dataset, indices: Tensor, second: int) -> None:
        self.dataset, self.indices, self.second = dataset, indices.tolist(), second

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        x, y = self.dataset[self.indices[index]][:2]
        return x, int(int(y) == self.second)


def check_classes(classes: Sequence[int], num_classes: int) -> Tuple[int, int]:
    """(first, second) of data.binary_classes, or one line saying what is allowed."""
    values = list(classes)
    if len(values) != 2 or values[0] == values[1] or not all(0 <= int(v) < num_classes for v in values):
        raise ConfigError(f"data.binary_classes={values}: allowed: two distinct labels in "
                          f"0..{num_classes - 1} (this dataset's classes), or null for all of them")
    return int(values[0]), int(values[1])


def _kept(labels: Tensor, pair: Tuple[int, int], split: str) -> Tensor:
    keep = ((labels == pair[0]) | (labels == pair[1])).nonzero().flatten()
    if keep.numel() == 0:
        raise DataError(f"data.binary_classes={list(pair)}: the {split} split holds no sample of "
                        f"either label (see data.{split}_size)")
    return keep


def _relabelled(datasets: Any, train_keep: Tensor, val_keep: Tensor, positive: int) -> Any:
    """`datasets` (edgesplit.data.datasets.Datasets) with the samples at train_keep / val_keep,
    label `positive` as 1 and any other as 0: a binary task."""
    resident = datasets.resident

    def kept_resident() -> ResidentImages:
        """The resident set's kept samples (its samples are the training set's), relabelled."""
        full = resident()
        return ResidentImages(full.images[train_keep], (full.labels[train_keep] == positive).long(),
                              full.mean, full.std, full.augment)

    return type(datasets)(TwoClasses(datasets.train, train_keep, positive),
                          TwoClasses(datasets.val, val_keep, positive), 2, datasets.input_shape,
                          None if resident is None else kept_resident)


def two_classes(datasets: Any, classes: List[int]) -> Any:
    """`datasets` with only the samples of the two `classes`, the first relabelled 0, the second 1
    (data.train_size / data.val_size cut before)."""
    pair = check_classes(classes, datasets.num_classes)
    return _relabelled(datasets, _kept(labels_of(datasets.train), pair, "train"),
                       _kept(labels_of(datasets.val), pair, "val"), pair[1])


def one_vs_rest(datasets: Any, positive: int) -> Any:
    """`datasets` with every sample, label `positive` relabelled 1 and every other 0 (on digits
    about 10 % positives: the imbalanced binary task of Li et al.'s label-leak setting)."""
    if not 0 <= positive < datasets.num_classes:
        raise ConfigError(f"data.one_vs_rest={positive}: allowed: a label in 0..{datasets.num_classes - 1} "
                          f"(this dataset's classes), or null for all of them")
    every = [torch.arange(len(cast(Sized, split))) for split in (datasets.train, datasets.val)]
    return _relabelled(datasets, every[0], every[1], positive)


def binary_task(datasets: Any, classes: Optional[List[int]], positive: Optional[int]) -> Any:
    """`datasets` as data.binary_classes or data.one_vs_rest asks (both null: unchanged)."""
    if classes is not None and positive is not None:
        raise ConfigError(f"data.binary_classes={classes} and data.one_vs_rest={positive}: allowed: "
                          f"at most one of them (the other null)")
    if classes is not None:
        return two_classes(datasets, classes)
    return datasets if positive is None else one_vs_rest(datasets, positive)
