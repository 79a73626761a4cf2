"""A compression boundary: its codecs, the forward support, byte counts, quality, replay and state."""
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torchgpipe import is_checkpointing, is_recomputing

from edgesplit.codecs import Codec, Identity
from edgesplit.comm import DIRECTION, CommMeter
from edgesplit.compression import BoundaryCodecs

RAW = BoundaryCodecs(Identity(), Identity(), reuses_support=False)


def quality(x: Tensor, y: Tensor) -> Tuple[float, float]:
    """Relative error ||x - y|| / ||x|| and the fraction of zeros in what arrived."""
    x32, y32 = x.detach().float(), y.detach().float()
    norm = float(torch.linalg.vector_norm(x32))
    err = float(torch.linalg.vector_norm(x32 - y32))
    return (err / norm if norm > 0 else 0.0), float((y32 == 0).float().mean())


class Boundary:
    """One crossing point of the pipeline, as every backend uses it: the sender calls `send`
    (encode, count the payload, measure the codec on the step's first crossing), the receiver
    calls `receive` (decode). The gradient codec sees the support the forward payload kept, which
    both sides derive from that payload (`support`), so it never travels.

    `meter` is None for a link between two cloud stages: raw values, nothing counted. Eval steps
    send raw values too when `eval_compressed` is off."""

    def __init__(self, name: str, codecs: BoundaryCodecs, meter: Optional[CommMeter],
                 eval_compressed: bool = True) -> None:
        self.name, self.codecs, self.meter = name, codecs, meter
        self.eval_compressed = eval_compressed
        self.training = True
        self._replay: Dict[int, Tensor] = {}
        self._measure_due = {"forward": False, "backward": False}

    @staticmethod
    def raw(name: str) -> "Boundary":
        """A link that carries raw values and is not the edge link (between cloud stages)."""
        return Boundary(name, RAW, None)

    @property
    def compressed(self) -> bool:
        return self.training or self.eval_compressed

    def codec(self, pass_: str) -> Codec:
        if not self.compressed:
            return RAW.activation
        return self.codecs.activation if pass_ == "forward" else self.codecs.gradient

    def new_step(self) -> None:
        """Measure the codecs on the first crossing of the next step; drop stale replays."""
        self._replay.clear()
        self._measure_due = {"forward": True, "backward": True}

    # -- the two halves of a crossing -----------------------------------------------------------
    def send(self, pass_: str, x: Tensor, support: Optional[Tensor] = None) -> Tensor:
        """The payload of `x` (an activation for pass_='forward', a gradient for 'backward')."""
        x = x.detach()
        payload = self.codec(pass_).encode(x, support=support)
        if self.meter is not None and self.training:
            self.meter.record(self.name, pass_, payload.numel(), x.numel() * 4)
            if self._measure_due[pass_]:
                self._measure_due[pass_] = False
                self.meter.record_quality(self.name, pass_,
                                          *quality(x, self.receive(pass_, payload, support)))
        return payload

    def receive(self, pass_: str, payload: Tensor, support: Optional[Tensor] = None) -> Tensor:
        return self.codec(pass_).decode(payload, support=support)

    def support(self, forward_payload: Tensor) -> Optional[Tensor]:
        """Where the gradient travels: the positions the forward payload kept (None: all)."""
        if not (self.compressed and self.codecs.reuses_support):
            return None
        return self.codecs.activation.support_of(forward_payload)

    def add_overhead(self, pass_: str, nbytes: int) -> None:
        """Transport bytes beside a payload of this boundary (message headers), counted apart."""
        if self.meter is not None and self.training:
            self.meter.record_overhead(DIRECTION[self.name, pass_], nbytes)

    def forward_payload(self, x: Tensor) -> Tensor:
        """send('forward', x), except that torchgpipe's checkpoint recomputation (which runs the
        forward again during backward) gets the first pass's payload back: the same mask and
        scale, no bytes counted twice, whatever the recomputed tensor's last bits."""
        if is_recomputing():
            return self._replay.pop(x.data_ptr())
        payload = self.send("forward", x)
        if is_checkpointing():
            self._replay[x.data_ptr()] = payload
        return payload

    # -- codec state (error-feedback residuals, per-sample references) ---------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"activation": self.codecs.activation.state_dict(),
                "gradient": self.codecs.gradient.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.codecs.activation.load_state_dict(state.get("activation", {}))
        self.codecs.gradient.load_state_dict(state.get("gradient", {}))


class _Cross(torch.autograd.Function):
    """The in-process crossing: forward sends the activation, backward sends the gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, boundary: Boundary) -> Tensor:
        payload = boundary.forward_payload(x)
        ctx.boundary = boundary
        # the support is needed only by a backward: not in eval nor in a checkpoint's first pass
        ctx.support = boundary.support(payload) if ctx.needs_input_grad[0] else None
        return boundary.receive("forward", payload)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None]:
        boundary, support = ctx.boundary, ctx.support
        return boundary.receive("backward", boundary.send("backward", grad, support), support), None


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
        return _Cross.apply(x, self.boundary)

    def extra_repr(self) -> str:
        c = self.boundary.codecs
        return f"{self.boundary.name}: activation={c.activation!r}, gradient={c.gradient!r}"
