"""TopK: keep the ceil(ratio*n) entries of largest |x|: bitmap or int32 indices, then values."""
import math
from fractions import Fraction
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from . import fused
from .base import Codec, Crossing, aligned, check_finite, encode_input, kept_support
from .base import scatter_support
from .header import BITMAP, INDICES, TOPK, TOPK_FIELDS, PayloadHeader, check_body, decode_header
from .header import device_head, encode_header, new_payload
from .masks import copy_into, count, flatnonzero, minmax, pack_mask_into, put, unpack_mask, zeros
from .select import Cut, cut_masks, topk_select
from .uniform import Noise


def check_ratio(name: str, ratio: object) -> float:
    """`ratio` as a float in (0, 1], or a one-line ValueError."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) \
            or not 0 < ratio <= 1:
        raise ValueError(f"{name}: ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def k_for(ratio: float, n: int) -> int:
    """k = ceil(ratio * n), at least 1 (for n > 0); ratio is read as its shortest decimal
    (repr), so ratio 0.7 of 10 elements keeps 7, not 8 as 0.7 * 10 == 7.000000000000001 would."""
    if n == 0:
        return 0
    return min(n, max(1, math.ceil(Fraction(repr(ratio)) * n)))


def index_format(n: int, k: int) -> Tuple[int, int]:
    """(format, bytes) of the cheaper index section: bitmap (ceil(n/8)) or int32 indices (4k);
    the bitmap on a tie."""
    bitmap = (n + 7) // 8
    return (INDICES, 4 * k) if 4 * k < bitmap else (BITMAP, bitmap)


def write_index(v: Tensor, cut: Cut, nonneg: bool, fmt: int, out: Tensor) -> None:
    """The index section (bitmap or int32 indices) of the entries of the flat v that `cut` keeps
    into out."""
    where: List[Tensor] = []
    for start, stop, mask in cut_masks(v, cut, nonneg):
        if fmt == BITMAP:
            pack_mask_into(mask, out[start // 8:(stop + 7) // 8])
        else:
            where.append(flatnonzero(mask).add_(start).to(torch.int32))
    if fmt == INDICES:
        out.copy_(torch.cat(where).view(torch.uint8))


def read_index(section: Tensor, fmt: int, n: int) -> Tensor:
    """The kept positions of an index section: a bool mask (bitmap) or int64 indices."""
    if fmt == BITMAP:
        return unpack_mask(section, n)
    return aligned(section, torch.int32).to(torch.int64)


def check_values(name: str, v: Tensor) -> bool:
    """Whether the flat v is >= 0 (no abs needed for |v|); NonFiniteError on NaN/inf."""
    if not v.numel():
        return False
    lo_f, hi_f = minmax(v)
    check_finite(name, lo_f, hi_f)
    return lo_f >= 0


def select(name: str, v: Tensor, ratio: float) -> Tuple[int, Cut, Tensor, bool]:
    """(k, cut, kept values, v >= 0) of the top-k |v| of the flat v; NonFiniteError on NaN/inf."""
    nonneg = check_values(name, v)
    k = k_for(ratio, v.numel())
    cut, kept = topk_select(v, k, nonneg)
    return k, cut, kept, nonneg


def check_index(name: str, section: Tensor, fmt: int, n: int, k: int) -> None:
    """ValueError unless the index section keeps exactly k distinct positions of n: a bitmap with
    k bits set and none beyond n, or k ascending int32 indices in [0, n)."""
    if fmt == BITMAP:
        kept = count(unpack_mask(section, n))
        if kept != k:
            raise ValueError(f"{name}: payload bitmap has {kept} bits set, field k is {k}")
        if n % 8 and int(section[-1]) >> (n % 8):
            raise ValueError(f"{name}: payload bitmap sets bits beyond the {n} elements")
        return
    where = read_index(section, fmt, n)
    if k and not (int(where[0]) >= 0 and int(where[-1]) < n and bool((where[1:] > where[:-1]).all())):
        raise ValueError(f"{name}: payload indices must be ascending, distinct and in [0, {n})")


def place(values: Tensor, section: Tensor, fmt: int, n: int, dtype: torch.dtype) -> Tensor:
    """A zero 1-D tensor of n entries with the values at the positions of an index section."""
    where = read_index(section, fmt, n)
    out = zeros(n, dtype, values.device)
    return put(out, flatnonzero(where) if fmt == BITMAP else where, values.to(dtype))


def support_mask(h: PayloadHeader, section: Tensor, fmt: int) -> Tensor:
    """The kept-positions mask (shape of the encoded tensor) of an index section."""
    where = read_index(section, fmt, h.numel)
    if fmt == INDICES:
        mask = torch.zeros(h.numel, dtype=torch.bool, device=section.device)
        mask[where] = True
        where = mask
    return where.view(h.shape)


class TopK(Codec):
    """Top-k pruning by |x| over the whole tensor: k = ceil(ratio*n) (at least 1), ties by lowest
    flat index; the wire holds a bitmap or int32 indices (the smaller) and the kept values."""

    name = "TopK"
    code, fields = TOPK, TOPK_FIELDS

    def __init__(self, ratio: float = 0.1) -> None:
        self.ratio = check_ratio(self.name, ratio)

    def __repr__(self) -> str:
        return f"TopK(ratio={self.ratio})"

    # the fused device path (edgesplit.codecs.fused): which settings decide the wire form, and
    # the bits of the kept values' codes (0: raw values); None: no fused path
    fused_bits: Optional[int] = 0

    @property
    def settings(self) -> tuple:
        return (self.name, self.ratio)

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        x, v = encode_input(self.name, x, support)
        if self.fused_bits is not None and fused.active(v):
            return self._encode_fused(x, v, crossing)
        k, cut, kept, nonneg = select(self.name, v, self.ratio)
        fmt, index_bytes = index_format(v.numel(), k)
        extra, value_bytes, write_values = self._values(kept, k, crossing)
        header = encode_header(self.code, x.dtype, tuple(x.shape), self.fields.pack(fmt, k, *extra))
        payload = new_payload(header, index_bytes + value_bytes, x.device)
        body = payload[len(header):]
        write_index(v, cut, nonneg, fmt, body[:index_bytes])
        write_values(body[index_bytes:])
        return payload

    def _encode_fused(self, x: Tensor, v: Tensor, crossing: Optional[Crossing]) -> Tensor:
        """encode's fused kernels: the same bytes, with no host read of the tensor."""
        k = k_for(self.ratio, v.numel())
        fmt, _ = index_format(v.numel(), k)
        bits = self.fused_bits or 0
        fields = self.fields.pack(fmt, k, bits, 0.0, 0.0) if bits else self.fields.pack(fmt, k)
        header = encode_header(self.code, x.dtype, tuple(x.shape), fields)
        noise = Noise(k, crossing, v.device).take(k) if self.random else None
        head = device_head(header, x.device)
        payload, keep, where, bad = fused.topk_payload(head, v, k, fmt == BITMAP, bits, noise)
        made = fused.Made(self.settings, x.dtype, tuple(x.shape), len(header), keep, where)
        return fused.mark(payload, made, bad)

    def _decode_fused(self, made: fused.Made, payload: Tensor) -> Tensor:
        """The kept values of a payload this process's fused encode made."""
        assert made.where is not None
        k = made.where.numel()
        body = payload[made.head + index_format(made.numel, k)[1]:]
        if not self.fused_bits:
            return aligned(body, made.dtype)
        params = aligned(payload[made.head - 8:made.head], torch.float32)
        return fused.dequantize(params, body, self.fused_bits, k, made.dtype)

    def _values(self, kept: Tensor, k: int, crossing: Optional[Crossing]
                ) -> Tuple[tuple, int, Callable[[Tensor], None]]:
        """(extra header fields, bytes, writer) of the kept values' section: here, raw values."""
        return (), k * kept.element_size(), lambda out: copy_into(out, kept.view(torch.uint8))

    def _value_bytes(self, h: PayloadHeader) -> int:
        """Bytes of the values section of a payload with header h: here, k raw values."""
        return h.fields[1] * torch.empty((), dtype=h.dtype).element_size()

    def _decode_values(self, h: PayloadHeader, section: Tensor) -> Tensor:
        """The k kept values (1-D, in the encoded dtype) of a values section."""
        return aligned(section, h.dtype)

    def _parse(self, payload: Tensor) -> Tuple[PayloadHeader, Tensor, Tensor]:
        """(header, index section, values section) of a payload: every field, the size and the
        index checked against each other before anything of the declared size is allocated."""
        h = decode_header(payload, self.code, self.fields)
        fmt, k = h.fields[0], h.fields[1]
        if fmt not in (BITMAP, INDICES):
            raise ValueError(f"{self.name}: payload field index format is {fmt}, allowed "
                             f"{BITMAP} (bitmap) or {INDICES} (int32 indices)")
        # k follows from n and this codec's ratio, which bounds n by the body's size too
        if k != k_for(self.ratio, h.numel):
            raise ValueError(f"{self.name}: payload field k is {k}, but ratio {self.ratio} of "
                             f"{h.numel} elements keeps {k_for(self.ratio, h.numel)}")
        expected_fmt, index_bytes = index_format(h.numel, k)
        if fmt != expected_fmt:
            raise ValueError(f"{self.name}: payload field index format is {fmt}, but {k} of "
                             f"{h.numel} elements are sent as format {expected_fmt}")
        body = payload[h.size:]
        check_body(self.name, body.numel(), index_bytes + self._value_bytes(h))
        check_index(self.name, body[:index_bytes], fmt, h.numel, k)
        return h, body[:index_bytes], body[index_bytes:]

    def decode(self, payload: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        made = fused.made_by(payload, self.settings)
        if made is not None and made.where is not None:
            out = fused.place(self._decode_fused(made, payload), made.where, made.numel)
            return scatter_support(self.name, out.view(made.shape), support)
        h, section, values = self._parse(payload)
        out = place(self._decode_values(h, values), section, h.fields[0], h.numel, h.dtype)
        return scatter_support(self.name, out.view(h.shape), support)

    def support_of(self, payload: Tensor) -> Optional[Tensor]:
        made = fused.made_by(payload, self.settings)
        if made is not None and made.keep is not None and made.where is not None:
            return kept_support(made.keep.view(made.shape), made.where)
        h, section, _ = self._parse(payload)
        return support_mask(h, section, h.fields[0])
