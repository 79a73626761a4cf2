"""How a tensor crosses a boundary: the codecs on the edge link, raw bytes between cloud stages."""
from typing import Any, Optional

from torch import Tensor

from edgesplit.backends.dist.protocol import pack_tensor, unpack_tensor


class Wire:
    """Encode/decode of activations and gradients at one boundary. `codecs` is a BoundaryCodecs
    (activation, gradient, reuses_support) or None for the raw form; eval steps use the raw form
    too unless `eval_compressed`. The gradient codec sees the support that the forward payload
    kept, on both sides, so the support never travels."""

    def __init__(self, codecs: Optional[Any], eval_compressed: bool = True) -> None:
        self.codecs = codecs
        self.eval_compressed = eval_compressed

    def compressed(self, training: bool) -> bool:
        return self.codecs is not None and (training or self.eval_compressed)

    def encode_activation(self, x: Tensor, training: bool) -> Tensor:
        x = x.detach()
        return self.codecs.activation.encode(x) if self.compressed(training) else pack_tensor(x)

    def decode_activation(self, payload: Tensor, training: bool) -> Tensor:
        if self.compressed(training):
            return self.codecs.activation.decode(payload)
        return unpack_tensor(payload).clone()

    def _support(self, activation_payload: Tensor) -> Optional[Tensor]:
        if self.codecs is None or not self.codecs.reuses_support:
            return None
        return self.codecs.activation.support_of(activation_payload)

    def encode_gradient(self, g: Tensor, activation_payload: Tensor) -> Tensor:
        if self.codecs is None:
            return pack_tensor(g)
        return self.codecs.gradient.encode(g.detach(), support=self._support(activation_payload))

    def decode_gradient(self, payload: Tensor, activation_payload: Tensor) -> Tensor:
        if self.codecs is None:
            return unpack_tensor(payload).clone()
        return self.codecs.gradient.decode(payload, support=self._support(activation_payload))
