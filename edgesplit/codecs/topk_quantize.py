"""TopKQuantize: the TopK selection, then the kept values quantized min-max with b bits."""
from typing import Callable, Optional, Tuple

from torch import Tensor

from .base import Crossing
from .bitpack import packed_size
from .groups import dequantize_groups, flat_groups, group_params, quantize_groups_into
from .groups import read_params, write_params
from .header import TOPK_QUANTIZE, TOPK_QUANTIZE_GROUPED, TOPKQ_FIELDS, TOPKQG_FIELDS, PayloadHeader
from .header import check_quant_fields
from .quantize import check_group_size
from .uniform import ROUNDINGS, Noise, check_bits, check_choice, dequantize, minmax_params
from .uniform import quantize_into
from .topk import TopK

SCALES = ("tensor", "group")  # the kept values are a flat list: no channels


class TopKQuantize(TopK):
    """Top-k by |x| (as TopK), the kept values (in flat index order) quantized with `bits` bits as
    Quantize does: min-max over all kept values (scale='tensor', in the header) or per run of
    `group_size` consecutive kept values (scale='group', their offsets and scales lead the codes);
    rounding nearest or stochastic. Wire: bitmap or int32 indices, [parameters,] packed codes."""

    name = "TopKQuantize"
    code, fields = TOPK_QUANTIZE, TOPKQ_FIELDS

    def __init__(self, ratio: float = 0.1, bits: int = 8, rounding: str = "nearest",
                 scale: str = "tensor", group_size: int = 512) -> None:
        super().__init__(ratio)
        self.bits = check_bits(self.name, bits)
        self.rounding = check_choice(self.name, "rounding", rounding, ROUNDINGS)
        self.scale = check_choice(self.name, "scale", scale, SCALES)
        self.group_size = check_group_size(self.name, group_size)
        self.random = self.rounding == "stochastic"
        self.fused_bits = self.bits if self.scale == "tensor" else None
        if self.scale == "group":
            self.code, self.fields = TOPK_QUANTIZE_GROUPED, TOPKQG_FIELDS

    @property
    def settings(self) -> tuple:
        return (self.name, self.ratio, self.bits, self.rounding, self.scale, self.group_size)

    def __repr__(self) -> str:
        extra = "" if self.rounding == "nearest" else f", rounding={self.rounding!r}"
        if self.scale == "group":
            extra += f", scale='group', group_size={self.group_size}"
        return f"TopKQuantize(ratio={self.ratio}, bits={self.bits}{extra})"

    def _values(self, kept: Tensor, k: int, crossing: Optional[Crossing]
                ) -> Tuple[tuple, int, Callable[[Tensor], None]]:
        noise = Noise(k, crossing, kept.device) if self.random else None
        if self.scale == "tensor":
            offset, scale = minmax_params(self.name, kept, self.bits)
            return ((self.bits, offset, scale), packed_size(k, self.bits),
                    lambda out: quantize_into(kept, self.bits, offset, scale, out, noise))
        g = flat_groups(k, self.group_size)
        offsets, scales = group_params(self.name, kept, g, self.bits)

        def write(out: Tensor) -> None:
            write_params(offsets, scales, out)
            quantize_groups_into(kept, g, self.bits, offsets, scales, out[g.params_bytes:], noise)
        return (self.bits, self.group_size), g.body_bytes(self.bits), write

    def _value_bytes(self, h: PayloadHeader) -> int:
        if self.scale == "tensor":
            _, k, bits, offset, scale = h.fields
            check_quant_fields(self.name, h.dtype, bits, offset, scale)
            return packed_size(k, bits)
        _, k, bits, size = h.fields
        check_quant_fields(self.name, h.dtype, bits, 0.0, 0.0)  # bits in 1..16
        if size != self.group_size:
            raise ValueError(f"{self.name}: payload field group size is {size}, expected "
                             f"{self.group_size}")
        return flat_groups(k, size).body_bytes(bits)

    def _decode_values(self, h: PayloadHeader, section: Tensor) -> Tensor:
        if self.scale == "tensor":
            _, k, bits, offset, scale = h.fields
            return dequantize(section, bits, k, offset, scale, h.dtype)
        _, k, bits, size = h.fields
        g = flat_groups(k, size)
        offsets, scales = read_params(self.name, section, g, bits, h.dtype)
        return dequantize_groups(section[g.params_bytes:], g, bits, offsets, scales, h.dtype)
