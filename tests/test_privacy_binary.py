"""data.binary_classes: two labels of any dataset kept and relabelled 0 and 1; data.one_vs_rest: one
label as 1, every other as 0, every sample kept; or one line why not."""
from typing import Callable, Sized, cast

import pytest
import torch
from omegaconf import DictConfig

from edgesplit.data.binary import check_classes, labels_of
from edgesplit.data.datasets import build_datasets, digits
from edgesplit.errors import ConfigError


def test_two_labels_kept_and_relabelled(make_cfg: Callable[..., DictConfig]) -> None:
    full = digits(256, 128)
    pair = build_datasets(make_cfg("data.binary_classes=[5,3]").data)  # TINY: digits 256 / 128
    assert pair.num_classes == 2 and pair.input_shape == full.input_shape
    for split in ("train", "val"):
        labels, kept = labels_of(getattr(full, split)), getattr(pair, split)
        assert len(cast(Sized, kept)) == int(((labels == 5) | (labels == 3)).sum())
        # the first label named is 0, the second 1, in the split's order
        assert torch.equal(torch.tensor([int(kept[i][1]) for i in range(len(kept))]),
                           (labels[(labels == 5) | (labels == 3)] == 3).long())
    resident = pair.resident_train("cpu_resident")
    assert torch.equal(resident.images, torch.stack([pair.train[i][0] for i in range(len(resident))]))
    assert torch.equal(resident.labels, torch.tensor([pair.train[i][1] for i in range(len(resident))]))
    with pytest.raises(ConfigError, match=r"^data.binary_classes=\[3\]: allowed: two distinct labels "
                                          r"in 0..9 \(this dataset's classes\), or null for all of them$"):
        build_datasets(make_cfg("data.binary_classes=[3]").data)


@pytest.mark.parametrize("value", [[3], [2, 2], [0, 10], [-1, 1], [1, 2, 3]])
def test_bad_binary_classes(value: list) -> None:
    with pytest.raises(ConfigError, match=r"^data.binary_classes=.*allowed: two distinct labels in 0..9"):
        check_classes(value, 10)
    assert check_classes([9, 0], 10) == (9, 0)


def test_one_vs_rest(make_cfg: Callable[..., DictConfig]) -> None:
    full = digits(256, 128)
    task = build_datasets(make_cfg("data.one_vs_rest=3").data)
    assert task.num_classes == 2
    for split in ("train", "val"):  # every sample, in order, label 3 as 1
        labels, kept = labels_of(getattr(full, split)), getattr(task, split)
        assert torch.equal(torch.tensor([int(kept[i][1]) for i in range(len(kept))]), (labels == 3).long())
        assert torch.equal(kept[7][0], getattr(full, split)[7][0])
    resident = task.resident_train("cpu_resident")
    assert torch.equal(resident.labels, (labels_of(full.train) == 3).long())
    assert 0 < int(resident.labels.sum()) < len(resident) // 4  # imbalanced: about 1 in 10


@pytest.mark.parametrize("overrides, message", [
    ("data.one_vs_rest=10", r"data.one_vs_rest=10: allowed: a label in 0..9 \(this dataset's classes\)"),
    ("data.one_vs_rest=-1", r"data.one_vs_rest=-1: allowed: a label in 0..9"),
    ("data.one_vs_rest=1 data.binary_classes=[0,1]",
     r"data.binary_classes=\[0, 1\] and data.one_vs_rest=1: allowed: at most one of them \(the other")])
def test_bad_one_vs_rest(make_cfg: Callable[..., DictConfig], overrides: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        build_datasets(make_cfg(*overrides.split()).data)
