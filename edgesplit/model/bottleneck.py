"""A learned bottleneck at each boundary (BottleNet++, C3-SL): the sender's encoder shrinks the
channels before the codec, the receiver's decoder restores them; both train with the model."""
import math
from typing import List, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from edgesplit.errors import ConfigError
from edgesplit.model.mobilenetv2 import eval_mode
from edgesplit.model.partition import Split, split_units


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


def boundary_channels(compressor: DictConfig, boundary: str) -> Tuple[int, int]:
    """(channels of the model's own tensor at `boundary`, channels that cross it): the encoder of
    a bottleneck sends reduced(C, channel_ratio) of C; (1, 1) without a bottleneck. The meter
    counts a crossing's fp32 bytes as the model's tensor's, so `vs fp32` compares a bottleneck
    with what an uncompressed split would send (compressor.shapes: set by with_bottlenecks)."""
    ratio, shapes = compressor.get("channel_ratio"), compressor.get("shapes")
    if ratio is None:
        return 1, 1
    if shapes is None:
        raise ConfigError("compressor.channel_ratio: compressor.shapes is not set yet; "
                          "build the split (bottleneck.split_model) before the boundaries")
    channels = int(shapes[("front", "back").index(boundary)][0])
    return channels, reduced(channels, ratio)


def boundary_shapes(units: List[nn.Module], front: int, back: int,
                    input_shape: Tuple[int, ...]) -> List[List[int]]:
    """Per-sample shapes of the tensors that cross the front and back boundaries (a probe
    forward of two zero samples in eval mode)."""
    x, shapes = torch.zeros(2, *input_shape), []
    with torch.no_grad(), eval_mode(units):
        for i, unit in enumerate(units):
            if i in (front, len(units) - back):
                shapes.append(list(x.shape[1:]))
            x = unit(x)
    return shapes


def with_bottlenecks(units: List[nn.Module], cfg: DictConfig,
                     input_shape: Tuple[int, ...]) -> Tuple[List[nn.Module], int, int]:
    """(units, front, back) with an encoder and a decoder unit at each boundary when
    `compressor.channel_ratio` is set: the encoder ends the sending partition, the decoder starts
    the receiving one, so their parameters, optimizer state and checkpoint entries belong to the
    side that runs them. The boundary shapes go into `compressor.shapes` (a cloud host builds
    its units from the config alone)."""
    front, back, c = cfg.partition.front, cfg.partition.back, cfg.compressor
    ratio = c.get("channel_ratio")
    if ratio is None:
        return list(units), front, back
    if c.shapes is None:
        c.shapes = boundary_shapes(units, front, back, input_shape)
    for name, shape in zip(("front", "back"), c.shapes):
        if len(shape) not in (1, 3):
            raise ConfigError(f"compressor.channel_ratio: the {name} boundary carries per-sample "
                              f"shape {tuple(shape)}; a bottleneck takes (C, H, W) or (C,)")
    (f_shape, b_shape), n = (tuple(s) for s in c.shapes), len(units)
    out = [*units[:front], Encoder(f_shape, ratio), Decoder(f_shape, ratio), *units[front:n - back],
           Encoder(b_shape, ratio), Decoder(b_shape, ratio), *units[n - back:]]
    return out, front + 1, back + 1


def split_model(units: List[nn.Module], cfg: DictConfig, input_shape: Tuple[int, ...]) -> Split:
    """The config's split of the model's units, with the bottlenecks it asks for."""
    units, front, back = with_bottlenecks(units, cfg, input_shape)
    return split_units(units, front, back, cfg.partition.cloud_stages, input_shape)
