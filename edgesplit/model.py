"""MobileNetV2 for CIFAR (the seed's: stem stride 1, second stage stride 1) as a flat list of layer units."""
from typing import List

from omegaconf import DictConfig
from torch import Tensor, nn

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


MODELS = {"mobilenetv2": mobilenetv2_units}


def build_units(cfg: DictConfig) -> List[nn.Module]:
    """The model named by `model.name` as its flat list of layer units."""
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name={cfg.name!r} is unknown: allowed: {', '.join(MODELS)}")
    return MODELS[cfg.name](width=cfg.width, num_classes=cfg.num_classes)
