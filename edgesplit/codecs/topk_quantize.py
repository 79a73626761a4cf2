"""TopKQuantize: the TopK selection, then the kept values quantized min-max with b bits."""
from typing import Callable, Optional, Tuple

from torch import Tensor

from .base import scatter_support
from .bitpack import packed_size
from .header import TOPK_QUANTIZE, TOPKQ_FIELDS, Header, decode_header
from .quantize import check_bits, dequantize, minmax_params, quantize_into
from .topk import TopK, index_format, place, support_mask


class TopKQuantize(TopK):
    """Top-k by |x| (as TopK), the kept values quantized with `bits` bits (min-max over the kept
    values, as Quantize): bitmap or int32 indices, then the packed codes."""

    name = "TopKQuantize"
    code, fields = TOPK_QUANTIZE, TOPKQ_FIELDS

    def __init__(self, ratio: float = 0.1, bits: int = 8) -> None:
        super().__init__(ratio)
        self.bits = check_bits(self.name, bits)

    def __repr__(self) -> str:
        return f"TopKQuantize(ratio={self.ratio}, bits={self.bits})"

    def _values(self, kept: Tensor, k: int) -> Tuple[tuple, int, Callable[[Tensor], None]]:
        offset, scale = minmax_params(self.name, kept, self.bits)
        return ((self.bits, offset, scale), packed_size(k, self.bits),
                lambda out: quantize_into(kept, self.bits, offset, scale, out))

    def _parse(self, payload: Tensor) -> Tuple[Header, tuple, Tensor, Tensor]:
        h = decode_header(payload, TOPK_QUANTIZE, TOPKQ_FIELDS)
        fmt, k, bits = h.fields[:3]
        _, index_bytes = index_format(h.numel, k)
        body = payload[h.size:]
        if body.numel() != index_bytes + packed_size(k, bits):
            raise ValueError(f"{self.name}: payload body has {body.numel()} bytes, expected "
                             f"{index_bytes + packed_size(k, bits)}")
        return h, h.fields, body[:index_bytes], body[index_bytes:]

    def decode(self, payload: Tensor, support: Optional[Tensor] = None) -> Tensor:
        h, (fmt, k, bits, offset, scale), section, codes = self._parse(payload)
        values = dequantize(codes, bits, k, offset, scale, h.dtype)
        out = place(values, section, fmt, h.numel, h.dtype).view(h.shape)
        return scatter_support(self.name, out, support)

    def support_of(self, payload: Tensor) -> Optional[Tensor]:
        h, fields, section, _ = self._parse(payload)
        return support_mask(h, section, fields[0])
