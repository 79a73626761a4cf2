"""The gpipe backend: torchgpipe's GPipe over [edge_front, cloud stage(s), edge_back] in micro-batches."""
from torch import Tensor, nn
from torchgpipe import GPipe

from edgesplit.backends.gpipe_recompute import ReplayingBoundaryLayer, plain_state_batch_norm
from edgesplit.assemble import RunParts
from edgesplit.backends.local import LocalBackend
from edgesplit.boundary.meter import CommMeter


class GPipeBackend(LocalBackend):
    name = "gpipe"
    boundary_layer = ReplayingBoundaryLayer

    def __init__(self, parts: RunParts, meter: CommMeter) -> None:
        super().__init__(parts, meter)
        b = parts.spec.pipeline
        # one module per partition: under autocast it is precision.Autocast, which enters autocast
        # inside the partition on torchgpipe's worker thread (and in its recomputation)
        self.pipe = GPipe(nn.Sequential(*self.partitions), balance=[1] * len(self.partitions),
                          devices=self.devices, chunks=b.chunks, checkpoint=b.checkpoint,
                          deferred_batch_norm=b.deferred_batch_norm)
        plain_state_batch_norm(self.pipe)
        # GPipe keeps the unit objects (deferred BatchNorm swaps only their BatchNorm children)
        self.partitions = list(self.pipe.partitions)

    def train(self, mode: bool = True) -> None:
        self.pipe.train(mode)

    def forward(self, x: Tensor) -> Tensor:
        return self.pipe(x.to(self.devices[0], non_blocking=True))
