"""A boundary inside one process: the layer that crosses it and its autograd function."""
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from edgesplit.boundary.boundary import Boundary

# one forward crossing: (payload, what the receiver decodes, the micro-batch's ids)
Crossed = Tuple[Tensor, Tensor, Optional[Tensor]]


class _InProcessCrossing(torch.autograd.Function):
    """Forward sends the activation, backward sends the gradient, both through the layer's boundary."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layer: "BoundaryLayer") -> Tensor:
        payload, out, ids = layer.cross_forward(x)
        ctx.boundary, ctx.ids = layer.boundary, ids
        # the support is needed only by a backward: not in eval nor in a pass without grad (the
        # first pass of a partition that is recomputed during backward)
        ctx.support = layer.boundary.support(payload) if ctx.needs_input_grad[0] else None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None]:
        _, out = ctx.boundary.exchange("backward", grad, ctx.support, ctx.ids)
        return out, None


class BoundaryLayer(nn.Module):
    """A boundary as the first layer of the partition that receives (naive, gpipe)."""

    def __init__(self, boundary: Boundary) -> None:
        super().__init__()
        self.boundary = boundary

    def train(self, mode: bool = True) -> "BoundaryLayer":
        self.boundary.training = mode
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        if not self.boundary.compressed:
            return x
        return _InProcessCrossing.apply(x, self)

    def cross_forward(self, x: Tensor) -> Crossed:
        """One forward crossing of the next micro-batch; a backend whose partitions run their
        forward twice overrides it (backends.gpipe_recompute)."""
        ids = self.boundary.next_ids(x.shape[0])
        return (*self.boundary.exchange("forward", x, ids=ids), ids)

    def extra_repr(self) -> str:
        c = self.boundary.codecs
        return f"{self.boundary.name}: activation={c.activation!r}, gradient={c.gradient!r}"
