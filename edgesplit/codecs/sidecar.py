"""Facts a codec keeps about a tensor it made, beside the tensor (never on it), for this process."""
from typing import Generic, Optional, TypeVar

from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

V = TypeVar("V")


class Sidecar(Generic[V]):
    """Values keyed by a tensor's identity, each dropped with its tensor: a payload's host-side
    facts reach its decoder in the same process, and nothing of them travels or outlives it.
    Lock-free: one dict operation each, atomic under the GIL (gpipe encodes on worker threads)."""

    def __init__(self) -> None:
        self._values = WeakIdKeyDictionary()

    def put(self, tensor: Tensor, value: V) -> Tensor:
        """tensor itself, with `value` kept beside it."""
        self._values[tensor] = value
        return tensor

    def get(self, tensor: Tensor) -> Optional[V]:
        """The value put beside this very tensor object (not a copy or view of it), else None."""
        value: Optional[V] = self._values.get(tensor)
        return value
