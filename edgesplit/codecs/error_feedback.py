"""Error feedback: each sample's compression residual, added to it at its next visit."""
from typing import Any, Dict, Optional

from torch import Tensor

from .base import Codec, Crossing, check_float
from .sample_cache import CacheSpec, SampleCache


class ErrorFeedback(Codec):
    """Wraps any codec of forward activations (EF-SGD, DGC): a training crossing encodes
    x + r[ids] and keeps r[ids] = (x + r[ids]) - decode(payload), the residual of each sample
    (by dataset index) that the inner codec lost. Payloads are the inner codec's, so the
    receiver keeps no state. Evaluation encodes x alone and changes nothing.

    Activation gradients are per sample and per visit (a sample's next gradient belongs to
    other weights), so the gradient side has no error feedback."""

    name = "ErrorFeedback"
    per_sample = True

    def __init__(self, inner: Codec, cache: CacheSpec) -> None:
        self.inner = inner
        self.cache = SampleCache(cache, "error-feedback residual")

    def __repr__(self) -> str:
        return f"ErrorFeedback({self.inner!r})"

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.inner.random

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        check_float(self.name, x)
        if crossing is None or crossing.ids is None or not crossing.update:
            return self.inner.encode(x, support, crossing)
        ids = self.cache.check_ids(crossing.ids)
        if ids.numel() != x.shape[0] or not self.cache.shape_ok(tuple(x.shape[1:])):
            raise ValueError(f"{self.name}: {ids.numel()} sample ids for a tensor of shape "
                             f"{tuple(x.shape)}")
        carried = x  # never written to: x.float() of an fp32 x is x itself
        if self.cache.rows is not None:
            carried = (x.float() + self.cache.get(ids, x.device)).to(x.dtype)
        payload = self.inner.encode(carried, support, crossing)
        lost = carried.float() - self.inner.decode(payload, support, crossing).float()
        self.cache.put(ids, lost)
        return payload

    def decode(self, payload: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        return self.inner.decode(payload, support, crossing)

    def support_of(self, payload: Tensor) -> Optional[Tensor]:
        return self.inner.support_of(payload)

    def state_dict(self) -> Dict[str, Any]:
        return {"cache": self.cache.state_dict(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.cache.load_state_dict(state.get("cache", {}))
        self.inner.load_state_dict(state.get("inner", {}))

    def state_bytes(self) -> int:
        return self.cache.nbytes + self.inner.state_bytes()
