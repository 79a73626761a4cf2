"""Models as flat lists of layer units: MobileNetV2 for CIFAR (the seed's), any other by `model._target_`."""
from contextlib import contextmanager
from typing import Any, Iterator, List, Mapping, Tuple

import torch
from torch import Tensor, nn

from edgesplit.config import instantiate_target
from edgesplit.errors import ConfigError

# (expansion, out channels, blocks, stride) of each stage; stage 2's stride is 1 for 32x32 input.
STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
            relu: bool = True) -> List[nn.Module]:
    layers: List[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, project 1x1 (linear bottleneck); a shortcut where stride is 1."""

    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.body = nn.Sequential(
            *conv_bn(c_in, hidden, 1),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *conv_bn(hidden, c_out, 1, relu=False),
        )
        self.stride = stride
        # As the seed's model: a 1x1 conv shortcut when stride is 1 and the width changes.
        self.shortcut = (nn.Sequential(*conv_bn(c_in, c_out, 1, relu=False))
                         if stride == 1 and c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out + self.shortcut(x) if self.stride == 1 else out


def mobilenetv2_units(width: float = 1.0, num_classes: int = 10) -> List[nn.Module]:
    """20 units: stem, 17 inverted-residual blocks, head conv 320->1280, classifier."""
    def ch(c: int) -> int:
        return max(1, int(round(c * width)))

    units: List[nn.Module] = [nn.Sequential(*conv_bn(3, ch(32), 3))]
    c_in = ch(32)
    for expansion, c_out, blocks, stride in STAGES:
        for i in range(blocks):
            units.append(InvertedResidual(c_in, ch(c_out), expansion, stride if i == 0 else 1))
            c_in = ch(c_out)
    units.append(nn.Sequential(*conv_bn(c_in, ch(1280), 1)))
    units.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch(1280), num_classes)))
    return units


def build_units(spec: Mapping[str, Any], num_classes: int) -> List[nn.Module]:
    """The layer units the `model` config `spec`'s `_target_` returns, called with `num_classes`
    (the dataset's) and the other `model` keys."""
    given = spec.get("num_classes")
    if given is not None and given != num_classes:
        raise ConfigError(f"model.num_classes={given} differs from the dataset's {num_classes} "
                          f"classes: set it to {num_classes} or null (= the dataset's)")
    units = instantiate_target(spec, "model._target_", num_classes=num_classes)
    if not isinstance(units, (list, tuple)) or not all(isinstance(u, nn.Module) for u in units):
        raise ConfigError(f"model._target_={spec['_target_']!r} must return a list of torch.nn.Module layer "
                          f"units, got {type(units).__name__}")
    return list(units)


@contextmanager
def eval_mode(units: List[nn.Module]) -> Iterator[None]:
    """Every module in eval mode inside, its own mode restored after (for probe forwards)."""
    modules = [m for u in units for m in u.modules()]
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def check_num_classes(units: List[nn.Module], num_classes: int, input_shape: Tuple[int, ...]) -> None:
    """A probe forward of one zero sample in eval mode: the model must output `num_classes` logits."""
    x = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad(), eval_mode(units):
            for unit in units:
                x = unit(x)
    except RuntimeError as e:
        raise ConfigError(f"model._target_: one sample of the dataset's shape {tuple(input_shape)} does not "
                          f"pass through the units: {' '.join(str(e).split())}") from None
    if tuple(x.shape) != (1, num_classes):
        raise ConfigError(f"model._target_: the model outputs shape {tuple(x.shape[1:])} per sample but "
                          f"the dataset has {num_classes} classes: its last unit must output {num_classes} "
                          "logits")
