"""The compression boundary as an autograd function: the forward and the backward pass each cross the link."""
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torchgpipe import is_checkpointing, is_recomputing

from edgesplit.comm import CommMeter
from edgesplit.compression import BoundaryCodecs


def _quality(x: Tensor, y: Tensor) -> Tuple[float, float]:
    """Relative error ||x - y|| / ||x|| and the fraction of zeros in what arrived."""
    x32, y32 = x.detach().float(), y.detach().float()
    norm = float(torch.linalg.vector_norm(x32))
    err = float(torch.linalg.vector_norm(x32 - y32))
    return (err / norm if norm > 0 else 0.0), float((y32 == 0).float().mean())


class _Cross(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, boundary: "Boundary") -> Tensor:  # type: ignore[override]
        codecs = boundary.codecs
        if is_recomputing():
            # torchgpipe's checkpoint runs this forward again in backward: replay the first pass's
            # payload (same mask and scale, no bytes counted twice).
            payload = boundary.replay.pop(x.data_ptr())
        else:
            payload = codecs.activation.encode(x)
            if is_checkpointing():
                boundary.replay[x.data_ptr()] = payload
            boundary.count("forward", payload, x)
        y = codecs.activation.decode(payload)
        if not is_recomputing():
            boundary.measure("forward", x, y)
        ctx.boundary = boundary
        # the support is needed only by a backward: not in eval nor in a checkpoint's first pass
        ctx.support = (codecs.activation.support_of(payload)
                       if codecs.reuses_support and ctx.needs_input_grad[0] else None)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None]:  # type: ignore[override]
        boundary, codec = ctx.boundary, ctx.boundary.codecs.gradient
        payload = codec.encode(grad, support=ctx.support)
        boundary.count("backward", payload, grad)
        grad_in = codec.decode(payload, support=ctx.support)
        boundary.measure("backward", grad, grad_in)
        return grad_in, None


class Boundary(nn.Module):
    """Sits first in the partition that receives; identity when compression is switched off for eval."""

    def __init__(self, name: str, codecs: BoundaryCodecs, meter: CommMeter,
                 eval_compressed: bool = True) -> None:
        super().__init__()
        self.name, self.codecs, self.meter = name, codecs, meter
        self.eval_compressed = eval_compressed
        self.replay: Dict[int, Tensor] = {}
        self._measure = {"forward": False, "backward": False}

    def new_step(self) -> None:
        """Measure codec quality on the first micro-batch of the next step; drop stale replays."""
        self.replay.clear()
        self._measure = {"forward": True, "backward": True}

    def count(self, pass_: str, payload: Tensor, x: Tensor) -> None:
        if self.training:
            self.meter.record(self.name, pass_, payload.numel(), x.numel() * 4)

    def measure(self, pass_: str, x: Tensor, y: Tensor) -> None:
        if self.training and self._measure[pass_]:
            self._measure[pass_] = False
            self.meter.record_quality(self.name, pass_, *_quality(x, y))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training and not self.eval_compressed:
            return x
        return _Cross.apply(x, self)

    def extra_repr(self) -> str:
        c = self.codecs
        return f"{self.name}: activation={type(c.activation).__name__}, gradient={type(c.gradient).__name__}"
