"""The codec interface: encode(tensor) -> payload (the flat uint8 wire form), decode(payload) -> tensor."""
from abc import ABC, abstractmethod
from typing import Optional

from torch import Tensor


class NonFiniteError(ValueError):
    """The tensor to encode holds NaN or inf."""


class Codec(ABC):
    """One wire format. A payload is a 1-D uint8 tensor on the input's device, header included:
    its numel is exactly the bytes that cross the link.

    `support` (a bool tensor of the input's shape) restricts a codec to the positions a forward
    payload kept: encode sends only x[support] and decode scatters them back (zeros elsewhere).
    Both sides of a boundary know the support, so it never travels with the gradient.
    """

    @abstractmethod
    def encode(self, x: Tensor, support: Optional[Tensor] = None) -> Tensor:
        """Wire form of x (any float dtype, contiguous or not)."""

    @abstractmethod
    def decode(self, payload: Tensor, support: Optional[Tensor] = None) -> Tensor:
        """The tensor a payload stands for, in the encoded tensor's shape and dtype."""

    def support_of(self, payload: Tensor) -> Optional[Tensor]:
        """Bool mask of the positions the payload keeps; None when it keeps all (dense codecs)."""
        return None
