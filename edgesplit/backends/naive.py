"""The naive backend: the partitions on their devices, the whole batch in sequence, no micro-batches."""
from torch import Tensor

from edgesplit.backends.local import LocalBackend


class NaiveBackend(LocalBackend):
    name = "naive"

    def forward(self, x: Tensor) -> Tensor:
        for part, device in zip(self.partitions, self.devices):
            x = part(x.to(device, non_blocking=True))
        return x
