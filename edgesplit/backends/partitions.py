"""Devices and the partition list of the in-process backends: [edge_front, cloud stage(s), edge_back]."""
from typing import Any, List, Type

import torch
from torch import nn

from edgesplit.backends.timing import SideClock, Stamp
from edgesplit.boundary.boundary import Boundary
from edgesplit.boundary.layer import BoundaryLayer
from edgesplit.errors import ConfigError
from edgesplit.model.partition import Split


def resolve_devices(spec: Any, partitions: int) -> List[torch.device]:
    """`auto`: the edge on GPU 0 (or CPU), cloud stages over the other GPUs; or an explicit list."""
    if spec == "auto":
        gpus = torch.cuda.device_count()
        if gpus == 0:
            return [torch.device("cpu")] * partitions
        cloud = [torch.device("cuda", (1 + s) % gpus if gpus > 1 else 0) for s in range(partitions - 2)]
        return [torch.device("cuda", 0), *cloud, torch.device("cuda", 0)]
    items = list(spec) if not isinstance(spec, (str, int)) else [spec]
    if len(items) != partitions:
        raise ConfigError(f"pipeline_backend.devices has {len(items)} entries: allowed: 'auto' or "
                          f"{partitions} (edge, {partitions - 2} cloud stage(s), edge)")
    try:
        devices = [torch.device("cuda", d) if isinstance(d, int) else torch.device(str(d)) for d in items]
    except RuntimeError as e:
        raise ConfigError(f"pipeline_backend.devices={items}: {e}") from None
    if devices[0] != devices[-1]:
        raise ConfigError(f"pipeline_backend.devices={items}: the first and last entries are both "
                          f"the edge and must be equal")
    for d in devices:
        if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"pipeline_backend.devices: {d} does not exist "
                              f"({torch.cuda.device_count()} GPU(s) here)")
    return devices


def build_partitions(split: Split, boundaries: List[Boundary], clock: SideClock,
                     layer: Type[BoundaryLayer] = BoundaryLayer) -> List[nn.Sequential]:
    """[edge_front, cloud stage(s), edge_back]; each boundary, as a `layer`, sits first in the
    partition that receives, so it sees that partition's input."""
    def stamped(side: str, *layers: nn.Module) -> nn.Sequential:
        return nn.Sequential(Stamp(clock, side, entry=True), *layers, Stamp(clock, side, entry=False))

    front, back = (layer(b) for b in boundaries)
    clouds = [list(stage) for stage in split.cloud_stages]
    clouds[0].insert(0, front)
    return [
        stamped("edge", *split.edge_front),
        *(stamped("cloud", *stage) for stage in clouds),
        stamped("edge", back, *split.edge_back),
    ]
