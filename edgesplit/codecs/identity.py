"""Identity ('none'): the header and the raw values in the input's dtype."""
import struct as _struct
from typing import Optional

import torch
from torch import Tensor

from .base import Codec, Crossing, encode_input, scatter_support
from .header import IDENTITY, check_body, decode_header, encode_header, new_payload

_NO_FIELDS = _struct.Struct("<")


class Identity(Codec):
    """No compression: the raw values travel (NaN/inf are not checked)."""

    name = "Identity"

    def __repr__(self) -> str:
        return "Identity()"

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        x, v = encode_input(self.name, x, support)
        header = encode_header(IDENTITY, x.dtype, tuple(x.shape), b"")
        payload = new_payload(header, v.numel() * v.element_size(), x.device)
        payload[len(header):].copy_(v.view(torch.uint8))
        return payload

    def decode(self, payload: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        h = decode_header(payload, IDENTITY, _NO_FIELDS)
        check_body(self.name, payload.numel() - h.size,
                   h.numel * torch.empty((), dtype=h.dtype).element_size())
        out = torch.empty(h.shape, dtype=h.dtype, device=payload.device)
        out.view(-1).view(torch.uint8).copy_(payload[h.size:])
        return scatter_support(self.name, out, support)
