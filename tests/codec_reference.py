"""The tests' oracle: the codecs' payloads by straightforward means (torch.sort, plain ops)."""
import math
from fractions import Fraction
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from edgesplit.codecs.header import BITMAP, INDICES, QUANT_FIELDS, TOPK_FIELDS, TOPKQ_FIELDS
from edgesplit.codecs.header import IDENTITY, QUANTIZE, TOPK, TOPK_QUANTIZE, encode_header


def _raw(v: Tensor) -> bytes:
    return v.contiguous().view(torch.uint8).numpy().tobytes()


def ref_k(ratio: float, n: int) -> int:
    """k = ceil(ratio * n) with ratio read as its shortest decimal, at least 1, at most n."""
    return min(n, max(1, math.ceil(Fraction(repr(float(ratio))) * n))) if n else 0


def ref_pack(codes: np.ndarray, bits: int) -> bytes:
    """The packed layout of bitpack.py: codes as a matrix of bits, numpy.packbits (LSB first)."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if bits == 16:
        return codes.astype("<u2").tobytes()
    if bits > 8:
        return codes.astype(np.uint8).tobytes() + ref_pack(codes >> 8, bits - 8)
    stream = ((codes[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little").tobytes()


def ref_topk_mask(v: Tensor) -> Tensor:
    """Positions in descending |v| order, ties by lowest index (a stable sort)."""
    return torch.sort(v.float().abs(), descending=True, stable=True).indices


def ref_quantize(v: Tensor, bits: int) -> bytes:
    """QUANT fields + packed codes of the 1-D v."""
    if v.numel() == 0:
        return QUANT_FIELDS.pack(bits, 0.0, 0.0)
    f = v.float()
    lo, hi = f.min(), f.max()
    scale = (hi - lo) / float(2 ** bits - 1)
    if scale.item() > 0:
        codes = ((f - lo.item()) / scale.item()).round().clamp(0, 2 ** bits - 1)
    else:
        codes = torch.zeros_like(f)
    return (QUANT_FIELDS.pack(bits, lo.item(), scale.item())
            + ref_pack(codes.to(torch.int64).numpy(), bits))


def ref_encode(kind: str, x: Tensor, ratio: float = 0.1, bits: int = 8,
               support: Optional[Tensor] = None) -> bytes:
    """The payload bytes the codec `kind` (identity, quantize, topk, topk_quantize) sends."""
    if support is not None:
        x = x[support]
    shape, v = tuple(x.shape), x.reshape(-1)
    n = v.numel()
    if kind == "identity":
        return encode_header(IDENTITY, x.dtype, shape, b"") + _raw(v)
    if kind == "quantize":
        q = ref_quantize(v, bits)
        return encode_header(QUANTIZE, x.dtype, shape, b"") + q
    k = ref_k(ratio, n)
    keep = ref_topk_mask(v)[:k].sort().values
    mask = torch.zeros(n, dtype=torch.bool)
    mask[keep] = True
    if 4 * k < (n + 7) // 8:
        fmt, index = INDICES, keep.numpy().astype("<i4").tobytes()
    else:
        fmt, index = BITMAP, ref_pack(mask.numpy(), 1)
    kept = v[keep]
    if kind == "topk":
        return (encode_header(TOPK, x.dtype, shape, TOPK_FIELDS.pack(fmt, k)) + index
                + _raw(kept))
    q = ref_quantize(kept, bits)
    qbits, lo, scale = QUANT_FIELDS.unpack_from(q)
    return (encode_header(TOPK_QUANTIZE, x.dtype, shape,
                          TOPKQ_FIELDS.pack(fmt, k, qbits, lo, scale))
            + index + q[QUANT_FIELDS.size:])
