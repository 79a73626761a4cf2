"""A learned bottleneck at each boundary (BottleNet++, C3-SL): the sender's encoder shrinks the
channels before the codec, the receiver's decoder restores them; both train with the model."""
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from edgesplit.boundary.meter import BOUNDARIES
from edgesplit.errors import ConfigError
from edgesplit.model.mobilenetv2 import eval_mode


def _layer(kind: int, c_in: int, c_out: int) -> nn.Module:
    """A 1x1 convolution and BatchNorm for a (C, H, W) tensor, a linear layer and BatchNorm for a
    (C,) one."""
    if kind == 3:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
    return nn.Sequential(nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out))


class Encoder(nn.Module):
    """The sending side's half: C channels -> ceil(C * ratio)."""

    def __init__(self, shape: Tuple[int, ...], ratio: float) -> None:
        super().__init__()
        self.layer = _layer(len(shape), shape[0], reduced(shape[0], ratio))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class Decoder(nn.Module):
    """The receiving side's half: ceil(C * ratio) channels -> C."""

    def __init__(self, shape: Tuple[int, ...], ratio: float) -> None:
        super().__init__()
        self.layer = _layer(len(shape), reduced(shape[0], ratio), shape[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def reduced(channels: int, ratio: float) -> int:
    return max(1, math.ceil(channels * ratio))


@dataclass(frozen=True)
class Bottleneck:
    """The bottleneck at both boundaries: the share of channels each encoder keeps, and the
    per-sample shapes of the model's own tensors at the front and back boundaries (from a probe
    forward on the edge: a cloud host rebuilds the halves from them without the dataset)."""
    ratio: float
    shapes: Tuple[Tuple[int, ...], Tuple[int, ...]]

    def __post_init__(self) -> None:
        for name, shape in zip(BOUNDARIES, self.shapes):
            if len(shape) not in (1, 3):
                raise ConfigError(f"compressor.channel_ratio: the {name} boundary carries per-sample "
                                  f"shape {tuple(shape)}; a bottleneck takes (C, H, W) or (C,)")


def boundary_channels(bottleneck: Optional[Bottleneck], boundary: str) -> Tuple[int, int]:
    """(channels of the model's own tensor at `boundary`, channels that cross it): the encoder of
    a bottleneck sends reduced(C, ratio) of C; (1, 1) without a bottleneck. The meter counts a
    crossing's fp32 bytes as the model's tensor's, so `vs fp32` compares a bottleneck with what
    an uncompressed split would send."""
    if bottleneck is None:
        return 1, 1
    channels = int(bottleneck.shapes[BOUNDARIES.index(boundary)][0])
    return channels, reduced(channels, bottleneck.ratio)


def boundary_shapes(units: List[nn.Module], front: int, back: int,
                    input_shape: Tuple[int, ...]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Per-sample shapes of the tensors that cross the front and back boundaries (a probe
    forward of two zero samples in eval mode)."""
    x, shapes = torch.zeros(2, *input_shape), []
    with torch.no_grad(), eval_mode(units):
        for i, unit in enumerate(units):
            if i in (front, len(units) - back):
                shapes.append(tuple(x.shape[1:]))
            x = unit(x)
    return shapes[0], shapes[1]


def with_bottlenecks(units: List[nn.Module], front: int, back: int,
                     bottleneck: Optional[Bottleneck]) -> Tuple[List[nn.Module], int, int]:
    """(units, front, back) with an encoder and a decoder unit at each boundary of `bottleneck`:
    the encoder ends the sending partition, the decoder starts the receiving one, so their
    parameters, optimizer state and checkpoint entries belong to the side that runs them."""
    if bottleneck is None:
        return list(units), front, back
    (f_shape, b_shape), ratio, n = bottleneck.shapes, bottleneck.ratio, len(units)
    out = [*units[:front], Encoder(f_shape, ratio), Decoder(f_shape, ratio), *units[front:n - back],
           Encoder(b_shape, ratio), Decoder(b_shape, ratio), *units[n - back:]]
    return out, front + 1, back + 1
