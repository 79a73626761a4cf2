"""What every pipeline backend offers the training loop: train/eval steps, epochs, state, stats."""
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict

import torch
from torch import Tensor, nn

from edgesplit.assemble import RunParts
from edgesplit.boundary.meter import CommMeter
from edgesplit.logs.summary import SideStats


@dataclass
class StepResult:
    """Sums over one batch (or several): loss x samples, top-1 and top-5 hits, samples, and the
    train steps that fp16's loss scaler skipped (a gradient overflowed: no weight changed)."""
    loss_sum: float
    correct1: int
    correct5: int
    count: int
    skipped: int = 0

    @staticmethod
    def of(logits: Tensor, target: Tensor, loss: Tensor, skipped: bool = False) -> "StepResult":
        """From a batch's logits and its mean loss."""
        with torch.no_grad():
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top == target.view(-1, 1)
            return StepResult(
                loss_sum=float(loss.detach()) * target.numel(),
                correct1=int(hits[:, 0].sum()),
                correct5=int(hits.any(dim=1).sum()),
                count=target.numel(),
                skipped=int(skipped),
            )

    def __add__(self, other: "StepResult") -> "StepResult":
        return StepResult(self.loss_sum + other.loss_sum, self.correct1 + other.correct1,
                          self.correct5 + other.correct5, self.count + other.count,
                          self.skipped + other.skipped)


def named_unit_parameters(units: Dict[int, nn.Module]) -> Dict[str, nn.Parameter]:
    """Parameters named `units.<index>.<name>`: the same names in every backend."""
    return {f"units.{i}.{name}": p for i, unit in sorted(units.items())
            for name, p in unit.named_parameters()}


class Backend(ABC):
    """Runs the split model and steps the optimizers of every side; knows nothing of files.

    A train step is forward, backward and each side's optimizer step. `start_epoch` sets every
    side's learning rate; `state_dict()` holds every side's state keyed by layer unit and
    parameter name (see edgesplit.run.checkpoint), so one checkpoint goes through one path."""

    name: str = "base"

    @abstractmethod
    def __init__(self, parts: RunParts, meter: CommMeter) -> None:
        """How build_backend makes every backend (`pipeline_backend._target_`): the assembled run
        (its split units, codecs, precision, pipeline and optimizer) and the meter its boundaries
        count into."""

    @abstractmethod
    def local_units(self) -> Dict[int, nn.Module]:
        """The layer units this process holds, by global unit index."""

    @abstractmethod
    def train_step(self, x: Tensor, y: Tensor, ids: Tensor) -> StepResult:
        """Forward, backward and optimizer step of one batch (of dataset indices `ids`) on every
        side."""

    @abstractmethod
    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        """Forward of one batch without gradients."""

    @abstractmethod
    def train(self, mode: bool = True) -> None:
        """Training or evaluation mode of every unit and boundary."""

    @abstractmethod
    def start_epoch(self, epoch: int) -> None:
        """Every side's learning rate for `epoch` (0-based); per-epoch statistics start afresh."""

    @property
    @abstractmethod
    def lr(self) -> float:
        """The learning rate of the current epoch."""

    @abstractmethod
    def side_stats(self) -> Dict[str, SideStats]:
        """Per side ('edge', 'cloud', ...) since start_epoch: parameters, peak memory, compute
        seconds per train step. Figures that other processes measured (their payload bytes and
        codec quality) are merged into the run's CommMeter here."""

    @abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        """Every side's units, optimizer, schedule, RNG and codec state (edgesplit.run.checkpoint)."""

    @abstractmethod
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Load a checkpoint written by any backend."""

    def close(self) -> None:
        """Release processes, threads and process groups."""
