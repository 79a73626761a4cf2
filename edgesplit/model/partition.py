"""Cut the flat list of layer units into edge-front | cloud stage(s) | edge-back."""
from dataclasses import dataclass
from typing import Any, Callable, List, Tuple

import torch
from torch import nn

from edgesplit.model.mobilenetv2 import eval_mode


@dataclass
class Split:
    """Units [0:front) and [n-back:n) stay on the edge; the cloud's units are cut into stages."""
    units: List[nn.Module]
    front: int
    back: int
    cloud_bounds: List[int]  # stage s holds units [cloud_bounds[s], cloud_bounds[s+1])

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def edge_front(self) -> nn.Sequential:
        return nn.Sequential(*self.units[: self.front])

    @property
    def edge_back(self) -> nn.Sequential:
        return nn.Sequential(*self.units[self.num_units - self.back:])

    @property
    def cloud_stages(self) -> List[nn.Sequential]:
        b = self.cloud_bounds
        return [nn.Sequential(*self.units[b[s]: b[s + 1]]) for s in range(len(b) - 1)]

    def cloud_range(self, stage: int) -> range:
        return range(self.cloud_bounds[stage], self.cloud_bounds[stage + 1])

    @property
    def cloud_indices(self) -> List[int]:
        return list(range(self.front, self.num_units - self.back))

    @property
    def edge_indices(self) -> List[int]:
        return list(range(self.front)) + list(range(self.num_units - self.back, self.num_units))


def unit_costs(units: List[nn.Module], input_shape: Tuple[int, ...] = (3, 32, 32)) -> List[float]:
    """Multiply-accumulates of each unit for one sample (convolutions and linear layers), from a
    probe forward in eval mode: what the cloud stages are balanced by, since early blocks hold
    few parameters but most of the compute."""
    macs = [0.0] * len(units)

    def count(index: int) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(m: nn.Module, _: Any, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
                macs[index] += out.numel() * k
            elif isinstance(m, nn.Linear):
                macs[index] += out.numel() * m.in_features
        return hook

    handles = [m.register_forward_hook(count(i)) for i, u in enumerate(units)
               for m in u.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        x = torch.zeros(1, *input_shape)
        with torch.no_grad(), eval_mode(units):
            for unit in units:
                x = unit(x)
    finally:
        for h in handles:
            h.remove()
    return macs


def split_units(units: List[nn.Module], front: int, back: int, cloud_stages: int = 1,
                input_shape: Tuple[int, ...] = (3, 32, 32)) -> Split:
    """Cut units; the cloud part is cut into `cloud_stages` stages of near-equal compute for one
    sample of `input_shape` (the dataset's)."""
    n = len(units)
    if front < 1 or back < 1 or front + back >= n:
        raise ValueError(f"front={front}, back={back} leave no cloud unit of {n}")
    cloud = list(range(front, n - back))
    if not 1 <= cloud_stages <= len(cloud):
        raise ValueError(f"cloud_stages={cloud_stages} must be in 1..{len(cloud)}")
    bounds = [front]
    if cloud_stages > 1:
        costs = unit_costs(units, input_shape)
        sizes = [costs[i] + 1 for i in cloud]
        total, acc, stage = sum(sizes), 0.0, 1
        for j, size in enumerate(sizes):
            acc += size
            left_units, left_stages = len(sizes) - j - 1, cloud_stages - stage
            # cut when this stage has its share, or when each later stage needs a unit
            if stage < cloud_stages and (acc >= total * stage / cloud_stages or left_units == left_stages):
                bounds.append(front + j + 1)
                stage += 1
    bounds.append(n - back)
    return Split(units=list(units), front=front, back=back, cloud_bounds=bounds)
