"""What the single-process backends (naive, gpipe) share: partitions, devices, per-side statistics."""
from typing import Dict, List

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from edgesplit.backends.base import Backend, StepResult, peak_memory_bytes
from edgesplit.backends.stages import boundaries, build_partitions, resolve_devices
from edgesplit.backends.timing import SideClock
from edgesplit.comm import CommMeter
from edgesplit.compression import BoundaryCodecs
from edgesplit.partition import Split


class LocalBackend(Backend):
    """All partitions in this process, each on its device."""

    def __init__(self, cfg: DictConfig, split: Split, codecs: Dict[str, BoundaryCodecs],
                 meter: CommMeter) -> None:
        self.split, self.meter, self.clock = split, meter, SideClock()
        self.partitions = build_partitions(split, codecs, meter, self.clock,
                                           cfg.compressor.eval_compressed)
        self.devices = resolve_devices(cfg.pipeline_backend.devices, len(self.partitions))
        for part, device in zip(self.partitions, self.devices):
            part.to(device)
        self.boundaries = boundaries(self.partitions)
        self.steps = 0

    def local_units(self) -> Dict[int, nn.Module]:
        return dict(enumerate(self.split.units))

    def train(self, mode: bool = True) -> None:
        for part in self.partitions:
            part.train(mode)

    def _begin(self) -> None:
        for b in self.boundaries:
            b.new_step()

    def _finish(self, logits: Tensor, y: Tensor, loss: Tensor) -> StepResult:
        self.meter.end_batch()
        self.steps += 1
        return StepResult.of(logits, y, loss)

    def side_devices(self) -> Dict[str, List[torch.device]]:
        return {"edge": [self.devices[0]], "cloud": self.devices[1:-1]}

    def side_stats(self) -> Dict[str, Dict[str, float]]:
        units = self.split.units
        params = {
            "edge": sum(p.numel() for i in self.split.edge_indices for p in units[i].parameters()),
            "cloud": sum(p.numel() for s in range(len(self.split.cloud_bounds) - 1)
                         for i in self.split.cloud_range(s) for p in units[i].parameters()),
        }
        out = {}
        for side, devices in self.side_devices().items():
            peak = max(peak_memory_bytes(d) for d in devices)
            out[side] = {
                "parameters": params[side],
                "peak_memory_bytes": peak,
                "compute_s_per_batch": self.clock.seconds[side] / max(self.steps, 1),
            }
        return out

    def reset_stats(self) -> None:
        self.clock.reset()
        self.steps = 0
