"""Cut the flat list of layer units into edge-front | cloud stage(s) | edge-back."""
from dataclasses import dataclass
from typing import List

from torch import nn


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
    def edge_indices(self) -> List[int]:
        return list(range(self.front)) + list(range(self.num_units - self.back, self.num_units))


def split_units(units: List[nn.Module], front: int, back: int, cloud_stages: int = 1) -> Split:
    """Cut units; the cloud part is cut into `cloud_stages` stages of near-equal parameter count."""
    n = len(units)
    if front < 1 or back < 1 or front + back >= n:
        raise ValueError(f"front={front}, back={back} leave no cloud unit of {n}")
    cloud = list(range(front, n - back))
    if not 1 <= cloud_stages <= len(cloud):
        raise ValueError(f"cloud_stages={cloud_stages} must be in 1..{len(cloud)}")
    sizes = [sum(p.numel() for p in units[i].parameters()) + 1 for i in cloud]
    bounds = [front]
    total, acc, stage = sum(sizes), 0, 1
    for j, size in enumerate(sizes):
        acc += size
        left_units, left_stages = len(sizes) - j - 1, cloud_stages - stage
        # cut when this stage has its share of parameters, or when each later stage needs a unit
        if stage < cloud_stages and (acc >= total * stage / cloud_stages or left_units == left_stages):
            bounds.append(front + j + 1)
            stage += 1
    bounds.append(n - back)
    return Split(units=list(units), front=front, back=back, cloud_bounds=bounds)
