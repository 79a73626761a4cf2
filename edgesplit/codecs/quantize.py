"""Quantize: min-max uniform quantization with b bits (1..16), per tensor, channel or group."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import fused
from .base import Codec, Crossing, aligned, encode_input, scatter_support
from .bitpack import packed_size
from .groups import MODES, SCALES, Groups, channel_groups, dequantize_groups, flat_groups
from .groups import group_params, quantize_groups_into, read_params, write_params
from .header import GROUPQ_FIELDS, QUANT_FIELDS, QUANTIZE, QUANTIZE_GROUPED, check_body
from .header import check_quant_fields, decode_header, device_head, encode_header, new_payload
from .uniform import ROUNDINGS, Noise, check_bits, check_choice, dequantize, minmax_params
from .uniform import quantize_into, zero_grid

__all__ = ["Quantize", "check_bits", "check_group_size"]


def check_group_size(name: str, size: object) -> int:
    """`size` as a positive int, or a one-line ValueError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{name}: group_size must be a positive int, got {size!r}")
    return size


class Quantize(Codec):
    """Min-max uniform quantization with `bits` bits (1..16).

    scale='tensor' (the seed's): offset = min, scale = (max - min) / (2**bits - 1) of the whole
    tensor, in the header. 'channel': a pair per channel (dim 1; a 1-D tensor is one channel);
    'group': a pair per `group_size` consecutive flat elements; their float32 offsets and scales
    lead the body. rounding='nearest': code = round((x - offset) / scale) (half to even), so
    |x - decode| <= scale / 2 (+ fp rounding); 'stochastic': code = floor((x - offset) / scale + u),
    u uniform in (0, 1) from the crossing's generator: unbiased, |x - decode| < scale.
    decode = offset + code * scale (fp32, then the input dtype).
    """

    name = "Quantize"

    def __init__(self, bits: int = 8, rounding: str = "nearest", scale: str = "tensor",
                 group_size: int = 512, zero_point: bool = False) -> None:
        self.bits = check_bits(self.name, bits)
        self.zero_point = zero_point  # grids with 0 on them (edgesplit.codecs.uniform.zero_grid)
        self.rounding = check_choice(self.name, "rounding", rounding, ROUNDINGS)
        self.scale = check_choice(self.name, "scale", scale, SCALES)
        self.group_size = check_group_size(self.name, group_size)
        self.random = self.rounding == "stochastic"

    def __repr__(self) -> str:
        extra = "" if self.rounding == "nearest" else f", rounding={self.rounding!r}"
        if self.scale != "tensor":
            extra += f", scale={self.scale!r}"
            extra += f", group_size={self.group_size}" if self.scale == "group" else ""
        return f"Quantize(bits={self.bits}{extra})"

    def groups(self, shape: Tuple[int, ...]) -> Groups:
        """The channel or group layout of a tensor of this shape (scale channel or group)."""
        if self.scale == "channel":
            return channel_groups(shape)
        n = 1
        for d in shape:
            n *= d
        return flat_groups(n, self.group_size)

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        x, v = encode_input(self.name, x, support)
        noise = Noise(v.numel(), crossing, v.device) if self.random else None
        if self.fusable and fused.active(v):
            header = encode_header(QUANTIZE, x.dtype, tuple(x.shape),
                                   QUANT_FIELDS.pack(self.bits, 0.0, 0.0))  # scale: the device's
            payload, bad = fused.quantize_payload(device_head(header, x.device), v, self.bits,
                                                  None if noise is None else noise.take(v.numel()))
            return fused.mark(payload, fused.Made(self.settings, x.dtype, tuple(x.shape),
                                                  len(header)), bad)
        if self.scale == "tensor":
            offset, scale = minmax_params(self.name, v, self.bits)
            if self.zero_point:
                grid = zero_grid(torch.tensor(offset), torch.tensor(scale), self.bits)
                offset, scale = (float(t) for t in grid)
            header = encode_header(QUANTIZE, x.dtype, tuple(x.shape),
                                   QUANT_FIELDS.pack(self.bits, offset, scale))
            payload = new_payload(header, packed_size(v.numel(), self.bits), x.device)
            quantize_into(v, self.bits, offset, scale, payload[len(header):], noise)
            return payload
        g = self.groups(tuple(x.shape))
        offsets, scales = group_params(self.name, v, g, self.bits)
        if self.zero_point:
            offsets, scales = zero_grid(offsets, scales, self.bits)
        size = g.count if self.scale == "channel" else self.group_size
        header = encode_header(QUANTIZE_GROUPED, x.dtype, tuple(x.shape),
                               GROUPQ_FIELDS.pack(self.bits, g.mode, size))
        payload = new_payload(header, g.body_bytes(self.bits), x.device)
        body = payload[len(header):]
        write_params(offsets, scales, body)
        quantize_groups_into(v, g, self.bits, offsets, scales, body[g.params_bytes:], noise)
        return payload

    @property
    def fusable(self) -> bool:
        """Whether the device path runs fused kernels (edgesplit.codecs.fused): tensor scales."""
        return self.scale == "tensor" and not self.zero_point

    @property
    def settings(self) -> tuple:
        """What decides the wire form: a fused payload is decoded fused by equal settings only."""
        return (self.name, self.bits, self.rounding, self.scale, self.zero_point)

    def decode(self, payload: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        made = fused.made_by(payload, self.settings)
        if made is not None:  # made in this process: the header's facts are known on the host
            params = aligned(payload[made.head - 8:made.head], torch.float32)
            out = fused.dequantize(params, payload[made.head:], self.bits, made.numel, made.dtype)
            return scatter_support(self.name, out.view(made.shape), support)
        if self.scale == "tensor":
            h = decode_header(payload, QUANTIZE, QUANT_FIELDS)
            bits, offset, scale = h.fields
            check_quant_fields(self.name, h.dtype, bits, offset, scale)
            body = payload[h.size:]
            check_body(self.name, body.numel(), packed_size(h.numel, bits))
            out = dequantize(body, bits, h.numel, offset, scale, h.dtype).view(h.shape)
            return scatter_support(self.name, out, support)
        h = decode_header(payload, QUANTIZE_GROUPED, GROUPQ_FIELDS)
        bits, mode, size = h.fields
        check_quant_fields(self.name, h.dtype, bits, 0.0, 0.0)  # bits in 1..16
        g = self.groups(h.shape)
        if mode != g.mode:
            raise ValueError(f"{self.name}: payload field scale mode is {mode}, this codec's "
                             f"scale={self.scale} is mode {MODES[self.scale]}")
        if size != (g.count if self.scale == "channel" else self.group_size):
            what = "channels" if self.scale == "channel" else "group size"
            raise ValueError(f"{self.name}: payload field {what} is {size}, expected "
                             f"{g.count if self.scale == 'channel' else self.group_size}")
        body = payload[h.size:]
        check_body(self.name, body.numel(), g.body_bytes(bits))
        offsets, scales = read_params(self.name, body, g, bits, h.dtype)
        out = dequantize_groups(body[g.params_bytes:], g, bits, offsets, scales, h.dtype)
        return scatter_support(self.name, out.view(h.shape), support)
