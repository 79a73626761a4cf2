"""Delta (AQ-SGD): each sample's activation as the quantized change from its previous visit."""
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .base import Codec, Crossing, check_float
from .header import DELTA, DELTA_FIELDS, decode_header, encode_header
from .identity import Identity
from .quantize import Quantize
from .sample_cache import CacheSpec, SampleCache


class Delta(Codec):
    """Both ends keep each training sample's last reconstruction (its reference, by dataset
    index). A micro-batch's payload: the rows of samples not seen yet, quantized with
    `first_bits` (raw when None), then the other rows' change from their reference quantized with
    `bits` on a grid through 0 (a unit that stays off changes by exactly 0). The rows each part
    holds follow from the `seen` flags both ends share, so no index travels in the payload. Both
    ends decode with crossing.update and store the result as the new reference (`mirrors`):
    their references stay equal.

    Without a training crossing (evaluation) the tensor is sent as a first visit would be (its
    samples have no reference): quantized with `first_bits` directly, no reference read or
    written."""

    name = "Delta"
    per_sample = True
    mirrors = True

    def __init__(self, bits: int = 4, first_bits: Optional[int] = 8, rounding: str = "nearest",
                 scale: str = "tensor", group_size: int = 512,
                 cache: Optional[CacheSpec] = None) -> None:
        self.bits, self.first_bits = bits, first_bits
        # changes are mostly near 0, and exactly 0 where a unit stays off: a grid through 0
        self.delta = Quantize(bits, rounding, scale, group_size, zero_point=True)
        self.first: Codec = (Identity() if first_bits is None
                             else Quantize(first_bits, rounding, scale, group_size))
        if cache is None:
            raise ValueError(f"{self.name}: needs a per-sample cache spec (compressor.num_samples)")
        self.cache = SampleCache(cache, "delta reference")

    def __repr__(self) -> str:
        return f"Delta(bits={self.bits}, first_bits={self.first_bits}, changes={self.delta!r})"

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.delta.random or self.first.random

    def _rows(self, crossing: Crossing, x_rows: int) -> Tuple[Tensor, Tensor]:
        """(the crossing's ids, checked; their seen flags), CPU tensors."""
        assert crossing.ids is not None
        ids = self.cache.check_ids(crossing.ids)
        if ids.numel() != x_rows:
            raise ValueError(f"{self.name}: {ids.numel()} sample ids for a tensor of {x_rows} rows")
        return ids, self.cache.seen[ids]

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        check_float(self.name, x)
        if support is not None:
            raise ValueError(f"{self.name}: a dense codec takes no support")
        if crossing is None or crossing.ids is None:
            return self.first.encode(x, crossing=crossing)
        if x.dim() < 1 or not self.cache.shape_ok(tuple(x.shape[1:])):
            raise ValueError(f"{self.name}: rows of shape {tuple(x.shape[1:])} do not match the "
                             f"per-sample cache")
        ids, seen_cpu = self._rows(crossing, x.shape[0])
        seen = seen_cpu.to(x.device)
        first = self.first.encode(x[~seen], crossing=crossing)
        changes = x[seen].float()
        if changes.numel():
            changes -= self.cache.get(ids[seen_cpu], x.device)
        delta = self.delta.encode(changes.to(x.dtype), crossing=Crossing(key=crossing.key + 1))
        header = encode_header(DELTA, x.dtype, tuple(x.shape),
                               DELTA_FIELDS.pack(first.numel(), delta.numel()))
        head = torch.frombuffer(bytearray(header), dtype=torch.uint8).to(x.device)
        return torch.cat([head, first, delta])

    def decode(self, payload: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        if support is not None:
            raise ValueError(f"{self.name}: a dense codec takes no support")
        if payload.numel() and int(payload[0]) != DELTA:
            return self.first.decode(payload)
        h = decode_header(payload, DELTA, DELTA_FIELDS)
        if crossing is None or crossing.ids is None:
            raise ValueError(f"{self.name}: a delta payload needs the micro-batch's sample ids "
                             f"(a training crossing)")
        first_bytes, delta_bytes = h.fields
        if h.size + first_bytes + delta_bytes != payload.numel() or not h.shape:
            raise ValueError(f"{self.name}: payload of {payload.numel()} bytes, its header declares "
                             f"{h.size} + {first_bytes} + {delta_bytes}")
        ids, seen = self._rows(crossing, h.shape[0])
        row = tuple(h.shape[1:])
        if not self.cache.shape_ok(row):
            raise ValueError(f"{self.name}: payload rows of shape {row} do not match the cache")
        first = self.first.decode(payload[h.size:h.size + first_bytes])
        changes = self.delta.decode(payload[h.size + first_bytes:])
        n_seen = int(seen.sum())
        for part, rows, what in ((first, h.shape[0] - n_seen, "first-visit"),
                                 (changes, n_seen, "delta")):
            if tuple(part.shape) != (rows, *row):
                raise ValueError(f"{self.name}: the {what} part holds shape {tuple(part.shape)}, "
                                 f"expected {(rows, *row)}")
        out = torch.empty(h.shape, dtype=torch.float32, device=payload.device)
        seen_dev = seen.to(payload.device)
        out[~seen_dev] = first.float()
        if n_seen:
            self.cache.ensure(row)
            out[seen_dev] = changes.float() + self.cache.get(ids[seen], payload.device)
        if crossing.update:
            self.cache.put(ids, out)
        return out.to(h.dtype)

    def observe(self, x: Tensor, crossing: Crossing) -> None:
        if crossing.ids is not None:
            self.cache.put(self.cache.check_ids(crossing.ids), x)

    def state_dict(self) -> Dict[str, Any]:
        return {"cache": self.cache.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.cache.load_state_dict(state.get("cache", {}))

    def state_bytes(self) -> int:
        return self.cache.nbytes
