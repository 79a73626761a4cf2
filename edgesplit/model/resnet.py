"""ResNet-18 for CIFAR (3x3 stem, no max-pool) as a flat list of layer units."""
from typing import List

from torch import Tensor, nn

from edgesplit.model.mobilenetv2 import conv_bn

# (out channels, stride) of each of the 8 basic blocks: four stages of two
BLOCKS = [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (1x1 conv-BN where the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(c_in, c_out, 3, stride), *conv_bn(c_out, c_out, 3, relu=False))
        self.shortcut = (nn.Sequential(*conv_bn(c_in, c_out, 1, stride, relu=False))
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def resnet18_units(width: float = 1.0, num_classes: int = 10) -> List[nn.Module]:
    """10 units: stem (conv 3x3 + BN + ReLU, 32x32), 8 basic blocks (64, 64, 128/2, 128, 256/2,
    256, 512/2, 512 channels at width 1; /2 halves the resolution), classifier (average pool,
    linear). Every unit ends in ReLU except the classifier."""
    def ch(c: int) -> int:
        return max(1, int(round(c * width)))

    units: List[nn.Module] = [nn.Sequential(*conv_bn(3, ch(64), 3))]
    c_in = ch(64)
    for c_out, stride in BLOCKS:
        units.append(BasicBlock(c_in, ch(c_out), stride))
        c_in = ch(c_out)
    units.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)))
    return units
