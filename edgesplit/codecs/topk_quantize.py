"""TopKQuantize: the TopK selection, then the kept values quantized min-max with b bits."""
from typing import Callable, Tuple

from torch import Tensor

from .bitpack import packed_size
from .header import TOPK_QUANTIZE, TOPKQ_FIELDS, Header, check_quant_fields
from .quantize import check_bits, dequantize, minmax_params, quantize_into
from .topk import TopK


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

    def _value_bytes(self, h: Header) -> int:
        _, k, bits, offset, scale = h.fields
        check_quant_fields(self.name, h.dtype, bits, offset, scale)
        return packed_size(k, bits)

    def _decode_values(self, h: Header, section: Tensor) -> Tensor:
        _, k, bits, offset, scale = h.fields
        return dequantize(section, bits, k, offset, scale, h.dtype)
