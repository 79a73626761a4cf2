"""The tests' oracle: the codecs' payloads by straightforward means (torch.sort, plain ops)."""
import math
import struct
import zlib
from fractions import Fraction
from typing import List, Optional, Tuple

import zstandard

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


def ref_noise(n: int, key: int) -> np.ndarray:
    """The n int16 draws of stochastic rounding on the CPU: the bytes of ceil(n/4) raw outputs of
    numpy's SFC64 seeded by the crossing's key."""
    raw = np.random.SFC64(np.random.SeedSequence(key)).random_raw((n + 3) // 4)
    return raw.view(np.int16)[:n]


def ref_round(f: np.ndarray, top: int, noise: Optional[np.ndarray]) -> np.ndarray:
    """Codes of the float32 f: round half to even, or floor(f + u) with u = (s + 32768.5) / 65536
    (exact in float32; the sum rounded once to float32)."""
    if noise is None:
        c = np.round(f)
    else:
        u = (noise.astype(np.float32) + np.float32(32768.5)) * np.float32(2.0 ** -16)
        c = np.floor(f + u)
    return np.clip(c, 0, top).astype(np.int64)


def ref_groups(shape: Tuple[int, ...], scale: str, group_size: int) -> List[np.ndarray]:
    """The flat indices of each scale group: per channel (dim 1; one channel below 2-D) or per
    run of group_size."""
    n = math.prod(shape)
    flat = np.arange(n)
    if scale == "group":
        return [flat[i:i + group_size] for i in range(0, n, group_size)]
    if len(shape) < 2:
        return [flat]
    per = flat.reshape(shape[0], shape[1], -1)
    return [per[:, c, :].reshape(-1) for c in range(shape[1])]


def ref_quantize_groups(v: Tensor, shape: Tuple[int, ...], bits: int, scale: str,
                        group_size: int, noise: Optional[np.ndarray] = None) -> bytes:
    """Per-channel/per-group parameters (float32 offsets, then scales) + packed codes of v."""
    f = v.reshape(-1).float().numpy()
    groups = ref_groups(shape, scale, group_size)
    top = 2 ** bits - 1
    offsets = np.zeros(len(groups), dtype=np.float32)
    scales = np.zeros(len(groups), dtype=np.float32)
    codes = np.zeros(f.size, dtype=np.int64)
    for i, idx in enumerate(groups):
        if idx.size == 0:
            continue
        lo, hi = f[idx].min(), f[idx].max()
        offsets[i], scales[i] = lo, np.float32(hi - lo) / np.float32(top)
        if scales[i] > 0:
            q = (f[idx] - offsets[i]) / scales[i]
            codes[idx] = ref_round(q, top, None if noise is None else noise[idx])
    return offsets.tobytes() + scales.tobytes() + ref_pack(codes, bits)


def ref_entropy(inner: bytes, method: str, level: int = 1) -> bytes:
    """The Entropy payload of an inner payload: codec id 8, method, inner size, the stream."""
    if method == "zlib":
        return struct.pack("<BBI", 8, 1, len(inner)) + zlib.compress(inner, level)
    body = zstandard.ZstdCompressor(level=level, write_content_size=False, write_checksum=False,
                                    write_dict_id=False).compress(inner)
    return struct.pack("<BBI", 8, 2, len(inner)) + body


def ref_quantize(v: Tensor, bits: int, noise: Optional[np.ndarray] = None) -> bytes:
    """QUANT fields + packed codes of the 1-D v (stochastic rounding with noise)."""
    if v.numel() == 0:
        return QUANT_FIELDS.pack(bits, 0.0, 0.0)
    f = v.float()
    lo, hi = f.min(), f.max()
    scale = (hi - lo) / float(2 ** bits - 1)
    if scale.item() > 0:
        q = ((f - lo.item()) / scale.item()).numpy()
        codes = ref_round(q, 2 ** bits - 1, noise)
    else:
        codes = np.zeros(v.numel(), dtype=np.int64)
    return QUANT_FIELDS.pack(bits, lo.item(), scale.item()) + ref_pack(codes, bits)


def ref_encode(kind: str, x: Tensor, ratio: float = 0.1, bits: int = 8,
               support: Optional[Tensor] = None, scale: str = "tensor", group_size: int = 512,
               key: Optional[int] = None) -> bytes:
    """The payload bytes the codec `kind` (identity, quantize, topk, topk_quantize) sends; scale
    channel or group, and stochastic rounding with the draws of `key` (None: nearest)."""
    if support is not None:
        x = x[support]
    shape, v = tuple(x.shape), x.reshape(-1)
    n = v.numel()
    if kind == "identity":
        return encode_header(IDENTITY, x.dtype, shape, b"") + _raw(v)
    if kind == "quantize":
        noise = None if key is None else ref_noise(n, key)
        if scale != "tensor":
            count = len(ref_groups(shape, scale, group_size))
            fields = struct.pack("<BBI", bits, 1 if scale == "channel" else 2,
                                 count if scale == "channel" else group_size)
            return (encode_header(5, x.dtype, shape, fields)
                    + ref_quantize_groups(v, shape, bits, scale, group_size, noise))
        q = ref_quantize(v, bits, noise)
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
    noise = None if key is None else ref_noise(k, key)
    if scale == "group":
        return (encode_header(6, x.dtype, shape, struct.pack("<BIBI", fmt, k, bits, group_size))
                + index + ref_quantize_groups(kept, (k,), bits, scale, group_size, noise))
    q = ref_quantize(kept, bits, noise)
    qbits, lo, scale_f = QUANT_FIELDS.unpack_from(q)
    return (encode_header(TOPK_QUANTIZE, x.dtype, shape,
                          TOPKQ_FIELDS.pack(fmt, k, qbits, lo, scale_f))
            + index + q[QUANT_FIELDS.size:])
