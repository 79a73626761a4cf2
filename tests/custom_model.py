"""A user's own model and dataset, defined outside edgesplit and plugged in by `_target_`."""
from typing import List, Optional

import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgesplit.data.datasets import Datasets

BLOBS_SHAPE = (3, 16, 16)
BLOBS_CLASSES = 4


def _conv(c_in: int, c_out: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def units(num_classes: int, width: float = 1.0) -> List[nn.Module]:
    """5 layer units: conv (same size), conv stride 2, conv stride 2, average pool to 4x4, linear.

    `model._target_=tests.custom_model.units`: edgesplit passes num_classes (the dataset's) and the
    other `model` keys (width).
    """
    c = max(1, round(16 * width))
    return [_conv(3, c, 1), _conv(c, 2 * c, 2), _conv(2 * c, 2 * c, 2),
            nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten()), nn.Linear(2 * c * 16, num_classes)]


def blobs(train_size: Optional[int] = None, val_size: Optional[int] = None) -> Datasets:
    """`data._target_=tests.custom_model.blobs`: noise around one constant image per class."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(BLOBS_CLASSES, *BLOBS_SHAPE, generator=g)

    def split(n: int) -> TensorDataset:
        y = torch.randint(BLOBS_CLASSES, (n,), generator=g)
        return TensorDataset(centers[y] + torch.randn(n, *BLOBS_SHAPE, generator=g), y)

    return Datasets(split(train_size or 512), split(val_size or 128), BLOBS_CLASSES, BLOBS_SHAPE)
