"""The naive backend: the partitions on their devices, the whole batch in sequence, no micro-batches."""
import torch
import torch.nn.functional as F
from torch import Tensor

from edgesplit.backends.base import StepResult
from edgesplit.backends.local import LocalBackend


class NaiveBackend(LocalBackend):
    name = "naive"

    def _forward(self, x: Tensor) -> Tensor:
        for part, device in zip(self.partitions, self.devices):
            x = part(x.to(device, non_blocking=True))
        return x

    def train_step(self, x: Tensor, y: Tensor) -> StepResult:
        self._begin()
        logits = self._forward(x)
        loss = F.cross_entropy(logits, y.to(logits.device))
        loss.backward()
        return self._finish(logits, y.to(logits.device), loss)

    @torch.no_grad()
    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        logits = self._forward(x)
        y = y.to(logits.device)
        return StepResult.of(logits, y, F.cross_entropy(logits, y))
