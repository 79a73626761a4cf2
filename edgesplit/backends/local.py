"""What the single-process backends (naive, gpipe) share: partitions, optimizer, state, side stats."""
from abc import abstractmethod
from typing import Any, Dict, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgesplit.assemble import RunParts
from edgesplit.run import checkpoint
from edgesplit.backends.base import Backend, StepResult, named_unit_parameters
from edgesplit.run.memory import peak_memory_bytes
from edgesplit.backends.partitions import build_partitions, resolve_devices
from edgesplit.backends.timing import SideClock
from edgesplit.boundary.layer import BoundaryLayer
from edgesplit.boundary.meter import CommMeter
from edgesplit.logs.summary import SideStats


class LocalBackend(Backend):
    """All partitions in this process, each on its device; one optimizer over every unit.

    `precision`: each partition runs under autocast on its device (entered inside the partition:
    precision.Autocast) and, for fp16, one loss scaler over every unit decides each step.
    `boundary_layer`: how a boundary crosses inside a partition (gpipe's replays recomputations)."""

    boundary_layer: Type[BoundaryLayer] = BoundaryLayer

    def __init__(self, parts: RunParts, meter: CommMeter) -> None:
        spec = parts.spec
        self.split, self.meter, self.clock = parts.split, meter, SideClock()
        self.precision = spec.precision
        # the receiving ends' own codec objects: per-sample state is each end's, as across hosts
        codecs, receivers = spec.codecs.build(), spec.codecs.build()
        self.boundaries = [spec.boundary(name, codecs, meter, receivers) for name in ("front", "back")]
        partitions = build_partitions(self.split, self.boundaries, self.clock, self.boundary_layer)
        self.devices = resolve_devices(spec.pipeline.devices, len(partitions))
        self.partitions = [self.precision.partition(part.to(device), device)
                           for part, device in zip(partitions, self.devices)]
        self.nopeek = spec.defenses.front(self.partitions[0])  # privacy.nopeek_weight's term, or None
        if self.nopeek is not None:
            self.partitions[0] = self.nopeek
        self.optimization = spec.optimization(named_unit_parameters(self.local_units()), self.devices[0])
        self.steps = 0
        self.chunks = spec.pipeline.chunks  # as torchgpipe cuts a batch (torch.chunk)

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch through every partition."""

    def local_units(self) -> Dict[int, nn.Module]:
        return dict(enumerate(self.split.units))

    def train(self, mode: bool = True) -> None:
        for part in self.partitions:
            part.train(mode)

    def train_step(self, x: Tensor, y: Tensor, ids: Tensor) -> StepResult:
        for b in self.boundaries:
            b.new_step(list(ids.chunk(self.chunks)))
        if self.nopeek is not None:
            self.nopeek.begin_step(x.shape[0], self.optimization.scaling.value)
        self.optimization.zero_grad()
        logits = self.forward(self.precision.input(x))
        y = y.to(logits.device)
        loss = F.cross_entropy(logits.float(), y)  # in fp32 whatever the logits' dtype
        self.optimization.scaling.scale(loss).backward()
        for b in self.boundaries:  # before any step: a NaN never reaches the weights
            b.check_finite()
        overflow = self.optimization.overflow([f for b in self.boundaries for f in b.overflows()])
        stepped = self.optimization.step(overflow)
        self.meter.end_batch()
        self.steps += 1
        return StepResult.of(logits, y, loss, skipped=not stepped)

    @torch.no_grad()
    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        logits = self.forward(self.precision.input(x))
        for b in self.boundaries:
            b.check_finite()
        y = y.to(logits.device)
        return StepResult.of(logits, y, F.cross_entropy(logits.float(), y))

    def start_epoch(self, epoch: int) -> None:
        self.optimization.start_epoch(epoch)
        for b in self.boundaries:
            b.start_epoch(epoch)
        self.clock.reset()
        self.steps = 0

    @property
    def lr(self) -> float:
        return self.optimization.lr

    def side_stats(self) -> Dict[str, SideStats]:
        units, split = self.split.units, self.split
        params = {"edge": sum(p.numel() for i in split.edge_indices for p in units[i].parameters()),
                  "cloud": sum(p.numel() for i in split.cloud_indices for p in units[i].parameters())}
        devices = {"edge": [self.devices[0]], "cloud": self.devices[1:-1]}
        front, back = self.boundaries  # the edge sends front and receives back
        state = {"edge": front.state_bytes(True) + back.state_bytes(False),
                 "cloud": front.state_bytes(False) + back.state_bytes(True)}
        return {side: SideStats(parameters=params[side],
                                peak_memory_bytes=max(peak_memory_bytes(d) for d in devices[side]),
                                compute_s_per_batch=self.clock.seconds[side] / max(self.steps, 1),
                                codec_state_bytes=state[side])
                for side in ("edge", "cloud")}

    def state_dict(self) -> Dict[str, Any]:
        return checkpoint.merge([checkpoint.part(checkpoint.EDGE_PROCESS, self.local_units(),
                                                 self.optimization, self.boundaries)])

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        checkpoint.load_part(state, checkpoint.EDGE_PROCESS, self.local_units(), self.optimization,
                             self.boundaries)
