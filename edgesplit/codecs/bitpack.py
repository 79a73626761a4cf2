"""Bit-packing of b-bit integer codes (b in 1..16) into exactly ceil(n*b/8) bytes, vectorized."""
from typing import Tuple

import torch
from torch import Tensor

from .base import on_host

# Layout of n codes of b bits (see docs/codecs.md):
#   b in 1..7:  one little-endian bit stream, code i in bits [i*b, i*b+b) (LSB first).
#   b == 8:     one byte per code.
#   b in 9..15: the low bytes of all codes (n bytes), then their high (b-8)-bit parts packed as
#               above; n + ceil(n*(b-8)/8) == ceil(n*b/8).
#   b == 16:    little-endian uint16 per code.
# Chunks that start at a multiple of 8 codes can be packed and unpacked independently.


def packed_size(n: int, bits: int) -> int:
    """Bytes that n codes of `bits` bits take."""
    return (n * bits + 7) // 8


def code_dtype(bits: int) -> torch.dtype:
    """The dtype codes of `bits` bits are computed in before packing."""
    return torch.uint8 if bits <= 8 else torch.int32


def _lane_mask(field: int, lane: int) -> int:
    """An int64 with the low `field` bits of every `lane`-bit lane set (as a signed value)."""
    m = 0
    for start in range(0, 64, lane):
        m |= ((1 << field) - 1) << start
    return m - (1 << 64) if m >= 1 << 63 else m


def _levels(bits: int) -> Tuple[Tuple[int, int, int], ...]:
    """(low-field mask, field width, lane width) of the three merge levels of 8 codes per int64."""
    return tuple((_lane_mask(bits << lv, 16 << lv), bits << lv, 8 << lv) for lv in range(3))


def _pack_small(codes: Tensor, bits: int) -> Tensor:
    """codes (uint8, < 2**bits, bits in 1..7) -> bit stream bytes, ceil(len*bits/8) of them."""
    n = codes.numel()
    groups = (n + 7) // 8
    if n % 8:
        padded = torch.zeros(groups * 8, dtype=torch.uint8, device=codes.device)
        padded[:n] = codes
        codes = padded
    t = codes.contiguous().view(torch.int64)
    for mask, field, half in _levels(bits):
        # each lane of 2*half bits holds two fields at bit 0 and bit half: move the upper to `field`
        t = (t & mask) | ((t >> (half - field)) & (mask << field))
    out = t.view(torch.uint8).view(groups, 8)[:, :bits].reshape(-1)
    return out[:packed_size(n, bits)]


def _unpack_small(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of _pack_small: the first n codes (uint8) of a bit stream."""
    groups = (n + 7) // 8
    stream = torch.zeros(groups * bits, dtype=torch.uint8, device=packed.device)
    stream[:packed.numel()] = packed
    buf = torch.zeros(groups, 8, dtype=torch.uint8, device=packed.device)
    buf[:, :bits] = stream.view(groups, bits)
    t = buf.view(torch.int64).view(-1)
    for mask, field, half in reversed(_levels(bits)):
        t = (t & mask) | ((t >> field) & mask) << half
    return t.view(torch.uint8)[:n]


def pack_codes_into(codes: Tensor, bits: int, out: Tensor, start: int, n: int) -> None:
    """Pack the codes of elements [start, start+len) of an n-code stream into `out` (its bytes).

    `start` must be a multiple of 8; codes are uint8 for bits <= 8, int32 otherwise.
    """
    m = codes.numel()
    if bits == 8:
        out[start:start + m].copy_(codes)
    elif bits == 16:
        if on_host(codes.device):
            raw = codes.to(torch.uint16).view(torch.uint8)
        else:  # uint16 casts are CPU-only in some torch builds: interleave the bytes
            raw = torch.stack([codes & 0xFF, codes >> 8], dim=1).to(torch.uint8).view(-1)
        out[2 * start:2 * (start + m)].copy_(raw)
    elif bits < 8:
        b0 = start * bits // 8
        out[b0:b0 + packed_size(m, bits)].copy_(_pack_small(codes, bits))
    else:
        out[start:start + m].copy_(codes & 0xFF)
        hi = (codes >> 8).to(torch.uint8)
        b0 = n + start * (bits - 8) // 8
        out[b0:b0 + packed_size(m, bits - 8)].copy_(_pack_small(hi, bits - 8))


def unpack_codes_from(packed: Tensor, bits: int, n: int, start: int, m: int) -> Tensor:
    """The codes [start, start+m) (start a multiple of 8) of an n-code stream (pack_codes_into).

    Returns uint8 codes for bits <= 8, int32 otherwise (a view of `packed` where possible).
    """
    if bits == 8:
        return packed[start:start + m]
    if bits == 16:
        raw = packed[2 * start:2 * (start + m)]
        if not on_host(raw.device):
            pairs = raw.view(-1, 2).to(torch.int32)
            return pairs[:, 0] | (pairs[:, 1] << 8)
        if raw.storage_offset() % 2:
            raw = raw.clone()
        return raw.view(torch.uint16).to(torch.int32)
    if bits < 8:
        b0 = start * bits // 8
        return _unpack_small(packed[b0:b0 + packed_size(m, bits)], bits, m)
    lo = packed[start:start + m].to(torch.int32)
    b0 = n + start * (bits - 8) // 8
    hi = _unpack_small(packed[b0:b0 + packed_size(m, bits - 8)], bits - 8, m)
    return lo | (hi.to(torch.int32) << 8)
