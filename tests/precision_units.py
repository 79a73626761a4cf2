"""Models of the precision tests (`model._target_`, importable by dist's cloud processes too)."""
import threading
from typing import Any, Dict, List

import torch
from torch import Tensor, nn
from torchgpipe import is_recomputing

from tests.dist_helpers import tiny_units

PROBES: List[Dict[str, Any]] = []  # one record per forward of a Probe


class Probe(nn.Module):
    """A conv unit that records, at each forward, whether autocast is on where it runs, on which
    thread, in a recomputation or not, and the dtype of its conv's output."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        PROBES.append({"autocast": torch.is_autocast_enabled(x.device.type), "dtype": y.dtype,
                       "main_thread": threading.current_thread() is threading.main_thread(),
                       "recomputing": is_recomputing()})
        return torch.relu(y)


def probe_units(num_classes: int = 4, width: float = 1.0) -> List[nn.Module]:
    """tiny_units with a Probe as unit 2 (a cloud unit with partition.front=2, back=2)."""
    units = tiny_units(num_classes, width)
    c = units[1].conv.out_channels
    return units[:2] + [Probe(c)] + units[2:]


class _GainedGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `gain` in fp16, as an fp16 kernel
    computing a weight gradient would (it overflows to inf past 65504)."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, gain: float) -> Tensor:
        ctx.gain = gain
        return w.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        return (grad.half() * ctx.gain).float(), None


class Loud(nn.Module):
    """A per-channel bias whose gradient is computed in fp16 and multiplied by `gain`: under fp16
    loss scaling it overflows where no other gradient does (its input's gradient stays finite)."""

    def __init__(self, c: int, gain: float) -> None:
        super().__init__()
        self.bias, self.gain = nn.Parameter(torch.zeros(c, 1, 1)), gain

    def forward(self, x: Tensor) -> Tensor:
        return x + _GainedGrad.apply(self.bias, self.gain)


def loud_units(num_classes: int = 4, width: float = 1.0, gain: float = 300.0) -> List[nn.Module]:
    """tiny_units with a Loud unit after unit 1 (unit 2: a cloud unit with partition.front=1)."""
    units = tiny_units(num_classes, width)
    return units[:2] + [Loud(units[1].conv.out_channels, gain)] + units[2:]
