"""What every pipeline backend offers the training loop: a train step, an eval step, its units."""
import resource
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, Iterator, List

import torch
from torch import Tensor, nn


@dataclass
class StepResult:
    """Sums over one batch: loss x samples, top-1 and top-5 hits, samples."""
    loss_sum: float
    correct1: int
    correct5: int
    count: int

    @staticmethod
    def of(logits: Tensor, target: Tensor, loss: Tensor) -> "StepResult":
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
            )

    def __add__(self, other: "StepResult") -> "StepResult":
        return StepResult(self.loss_sum + other.loss_sum, self.correct1 + other.correct1,
                          self.correct5 + other.correct5, self.count + other.count)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process on `device`: CUDA allocations on a GPU, else the max resident
    set size (Linux reports KiB)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Backend(ABC):
    """Runs the split model. The training loop owns the optimizer of `parameters()` and steps it."""

    name: str = "base"

    @abstractmethod
    def local_units(self) -> Dict[int, nn.Module]:
        """The layer units this process holds, by global unit index (all of them in one process)."""

    def parameters(self) -> Iterator[nn.Parameter]:
        for _, unit in sorted(self.local_units().items()):
            yield from unit.parameters()

    def named_parameters(self) -> Iterator[tuple]:
        """Parameters named `units.<index>.<name>`: the same names in every backend."""
        for index, unit in sorted(self.local_units().items()):
            for name, p in unit.named_parameters():
                yield f"units.{index}.{name}", p

    @abstractmethod
    def train_step(self, x: Tensor, y: Tensor) -> StepResult:
        """Forward and backward of one batch (gradients accumulate; the caller steps)."""

    @abstractmethod
    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        """Forward of one batch without gradients."""

    def train(self, mode: bool = True) -> None:
        for unit in self.local_units().values():
            unit.train(mode)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for backends with remote stages (they follow the edge's schedule)."""

    def save_remote(self, directory: str, epoch: int) -> List[str]:
        """Have remote stages save their units; returns the part files written (relative names)."""
        return []

    def load_remote(self, directory: str, parts: List[str]) -> None:
        """Have remote stages load their units from a checkpoint's part files."""

    def reset_stats(self) -> None:
        """Start the per-batch time averages of side_stats() afresh."""

    def side_stats(self) -> Dict[str, Dict[str, float]]:
        """Per side ('edge', 'cloud'): parameters, peak_memory_bytes, compute_s_per_batch."""
        return {}

    def close(self) -> None:
        """Release processes, threads and process groups."""
