"""Quantize: min-max uniform quantization with b bits (1..16) over the whole tensor, bit-packed."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import Codec, Crossing, check_finite, chunk_len, chunk_spans, encode_input
from .base import on_host
from .base import scatter_support
from .bitpack import code_dtype, pack_codes_into, packed_size, unpack_codes_from
from .header import QUANT_FIELDS, QUANTIZE, check_body, check_quant_fields, decode_header
from .header import encode_header, new_payload


def check_bits(name: str, bits: object) -> int:
    """`bits` as an int in 1..16, or a one-line ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"{name}: bits must be in 1..16, got {bits!r}")
    return bits


def minmax_params(name: str, v: Tensor, bits: int) -> Tuple[float, float]:
    """(offset, scale) of v: offset = min, scale = (max - min) / (2**bits - 1), both float32.

    Raises NonFiniteError when v holds NaN/inf (min/max propagate them) or max - min overflows.
    """
    if v.numel() == 0:
        return 0.0, 0.0
    lo, hi = torch.stack(torch.aminmax(v)).float().cpu()  # CUDA divides by scalars inexactly
    scale = (hi - lo) / float(2 ** bits - 1)
    lo_f, hi_f, scale_f = torch.stack([lo, hi, scale]).tolist()
    check_finite(name, lo_f, hi_f)
    if not math.isfinite(scale_f):
        raise ValueError(f"{name}: value range [{lo_f}, {hi_f}] overflows float32")
    return lo_f, scale_f


def quantize_into(v: Tensor, bits: int, offset: float, scale: float, out: Tensor) -> None:
    """Codes round((v - offset) / scale) of the 1-D v, packed into out (ceil(n*bits/8) bytes).

    Works chunk by chunk in fp32 with small scratch buffers; scale 0 gives all-zero codes.
    """
    n = v.numel()
    top = float(2 ** bits - 1)
    step = chunk_len(n, v.device)
    scratch = torch.empty(step, dtype=torch.float32, device=v.device)
    # CUDA divides by a Python scalar as a multiply by its reciprocal; a device tensor divisor
    # gives true division, so CPU and GPU payloads are the same bytes.
    divisor = scale if on_host(v.device) else torch.tensor(scale, device=v.device)
    codes = torch.empty(step, dtype=code_dtype(bits), device=v.device)
    for start, stop in chunk_spans(n, v.device):
        f = scratch[:stop - start]
        if scale > 0:
            if v.dtype == torch.float32:
                torch.sub(v[start:stop], offset, out=f)
            else:
                f.copy_(v[start:stop])
                f.sub_(offset)
            f.div_(divisor).round_().clamp_(0.0, top)
        else:
            f.zero_()
        if bits == 8:
            out[start:stop].copy_(f)
        else:
            c = codes[:stop - start]
            c.copy_(f)
            pack_codes_into(c, bits, out, start, n)


def dequantize(packed: Tensor, bits: int, n: int, offset: float, scale: float,
               dtype: torch.dtype) -> Tensor:
    """The 1-D tensor offset + code * scale (computed in fp32) of n packed codes, in `dtype`."""
    out = torch.empty(n, dtype=dtype, device=packed.device)
    scratch = None if dtype == torch.float32 else torch.empty(
        chunk_len(n, packed.device), dtype=torch.float32, device=packed.device)
    for start, stop in chunk_spans(n, packed.device):
        codes = unpack_codes_from(packed, bits, n, start, stop - start)
        f = out[start:stop] if scratch is None else scratch[:stop - start]
        torch.mul(codes, scale, out=f)
        f.add_(offset)
        if scratch is not None:
            out[start:stop].copy_(f)
    return out


class Quantize(Codec):
    """Min-max uniform quantization of the whole tensor with `bits` bits (1..16).

    offset = min, scale = (max - min) / (2**bits - 1), code = round((x - min) / scale) (half to
    even), decode = offset + code * scale, so |x - decode| <= scale / 2 (+ fp rounding).
    """

    name = "Quantize"

    def __init__(self, bits: int = 8) -> None:
        self.bits = check_bits(self.name, bits)

    def __repr__(self) -> str:
        return f"Quantize(bits={self.bits})"

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        x, v = encode_input(self.name, x, support)
        offset, scale = minmax_params(self.name, v, self.bits)
        header = encode_header(QUANTIZE, x.dtype, tuple(x.shape),
                               QUANT_FIELDS.pack(self.bits, offset, scale))
        payload = new_payload(header, packed_size(v.numel(), self.bits), x.device)
        quantize_into(v, self.bits, offset, scale, payload[len(header):])
        return payload

    def decode(self, payload: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        h = decode_header(payload, QUANTIZE, QUANT_FIELDS)
        bits, offset, scale = h.fields
        check_quant_fields(self.name, h.dtype, bits, offset, scale)
        body = payload[h.size:]
        check_body(self.name, body.numel(), packed_size(h.numel, bits))
        out = dequantize(body, bits, h.numel, offset, scale, h.dtype).view(h.shape)
        return scatter_support(self.name, out, support)
