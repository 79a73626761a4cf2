"""A model with dropout in a cloud unit (`model._target_`, importable by dist's cloud processes)."""
from typing import List

from torch import nn

from tests.dist_helpers import tiny_units


def units(num_classes: int = 4, width: float = 1.0) -> List[nn.Module]:
    """tiny_units with dropout after unit 2: a cloud unit at partition.front=1, back=1."""
    out = tiny_units(num_classes, width)
    out[2] = nn.Sequential(out[2], nn.Dropout(0.5))
    return out
