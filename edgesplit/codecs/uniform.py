"""Min-max uniform quantization primitives: parameters, rounding (nearest or stochastic), codes."""
import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from edgesplit.options import MAX_BITS, Rounding, bits_in_range, options

from .base import Crossing, check_finite, chunk_len, chunk_spans, on_host
from .bitpack import code_dtype, pack_codes_into, unpack_codes_from

ROUNDINGS = options(Rounding)
# Stochastic rounding adds u = (s + 32768.5) / 65536 to (x - offset) / scale, s a uniform random
# int16: u is uniform on 65536 points of (0, 1), mean 1/2 exactly, so a code's expected value is
# (x - offset) / scale up to 2**-17 of a step. The sum is rounded once (float32) and floored.
NOISE_OFFSET = 32768.5
NOISE_STEP = 2.0 ** -16
NOISE_BLOCK = 1 << 16  # numbers drawn and added at a time on the host path (a multiple of 4)


def check_bits(name: str, bits: object) -> int:
    """`bits` as an int in 1..MAX_BITS, or a one-line ValueError."""
    if not bits_in_range(bits):
        raise ValueError(f"{name}: bits must be in 1..{MAX_BITS}, got {bits!r}")
    return bits


def check_choice(name: str, key: str, value: object, allowed: Tuple[str, ...]) -> str:
    """`value` if it is one of `allowed`, or a one-line ValueError naming the key."""
    if value not in allowed:
        raise ValueError(f"{name}: {key} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


class Noise:
    """The n uniform random int16 of a stochastic-rounding encode, seeded by the crossing's key
    (None: key 0), taken in order, chunk by chunk (every take but the last a multiple of 4), so
    the host path's chunks and the device path's single piece add the same numbers.

    On the CPU they are the bytes of raw outputs of numpy's SFC64 seeded by the key, drawn as
    they are taken (a chunk's numbers are still in cache when they are added; about four times
    as fast as torch's mt19937, which dominated the cost of stochastic 8-bit quantization).
    Elsewhere they are the bytes of ceil(n/4) full-range int64 draws of
    crossing.generator(device), one tensor."""

    def __init__(self, n: int, crossing: Optional[Crossing], device: torch.device) -> None:
        key = (crossing or Crossing()).key
        self.at = 0
        self.stream: Optional[np.random.SFC64] = None
        self.drawn: Optional[Tensor] = None
        if device.type == "cpu":
            self.stream = np.random.SFC64(np.random.SeedSequence(key % 2 ** 64))
        else:
            words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
            words.random_(-2 ** 63, None, generator=Crossing(key=key).generator(device))
            self.drawn = words.view(torch.int16)[:n]

    def take(self, m: int) -> Tensor:
        """The next m numbers."""
        if self.stream is not None:
            return torch.from_numpy(self.stream.random_raw((m + 3) // 4).view(np.int16)[:m])
        assert self.drawn is not None
        self.at += m
        return self.drawn[self.at - m:self.at]


def round_codes(f: Tensor, noise: Optional[Noise], top: float, scratch: Optional[Tensor]) -> None:
    """f (1-D) = clamp(round(f), 0, top) in place (half to even); with noise, f = clamp(f + u, 0,
    top) with the next len(f) numbers, which store_codes truncates: floor(f + u) (f + u > 0).
    scratch: fp32 of min(len(f), NOISE_BLOCK) at least (of len(f) on the device path). On the
    host path the numbers are drawn and added a block at a time: they stay in the core's cache."""
    if noise is None:
        f.round_()
    else:
        assert scratch is not None
        step = NOISE_BLOCK if on_host(f.device) else max(f.numel(), 1)
        for start in range(0, f.numel(), step):
            part = f[start:start + step]
            u = scratch[:part.numel()]
            torch.add(noise.take(part.numel()), NOISE_OFFSET, out=u)  # exact in float32
            part.add_(u, alpha=NOISE_STEP)  # f + u, one rounding: u * 2**-16 is exact
    f.clamp_(0.0, top)


def noise_scratch(n: int, device: torch.device) -> int:
    """The scratch elements round_codes needs with noise for chunks of up to n."""
    return min(n, NOISE_BLOCK) if on_host(device) else n


def store_codes(f: Tensor, bits: int, codes: Tensor, out: Tensor, start: int, n: int) -> None:
    """The codes of fp32 f in [0, top] (truncated: floor), codes start..start+len of an n-code
    stream, packed into out."""
    if bits == 8:
        out[start:start + f.numel()].copy_(f)
    else:
        c = codes[:f.numel()]
        c.copy_(f)
        pack_codes_into(c, bits, out, start, n)


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


def zero_grid(offset: Tensor, scale: Tensor, bits: int) -> Tuple[Tensor, Tensor]:
    """(offset, scale) of grids that cover [offset, offset + (2**bits - 1) * scale] (widened to
    hold 0) and have 0 as a grid point, so zeros decode exactly (float32 tensors, elementwise).
    For changes from a reference, mostly near 0. bits 1 has two points and keeps min-max."""
    steps = float(2 ** bits - 1)
    if bits < 2:
        return offset, scale
    lo = torch.clamp(offset, max=0.0)
    hi = torch.clamp(offset + scale * steps, min=0.0)
    width = (hi - lo).clamp(min=torch.finfo(torch.float32).tiny)
    below = torch.round(-lo / width * steps).clamp(1.0, steps - 1.0)  # grid steps under 0
    grid = torch.maximum(-lo / below, hi / (steps - below))
    return -below * grid, grid


def quantize_into(v: Tensor, bits: int, offset: float, scale: float, out: Tensor,
                  noise: Optional[Noise] = None) -> None:
    """Codes round((v - offset) / scale) of the 1-D v (or floor(... + u) with noise), packed into
    out (ceil(n*bits/8) bytes).

    Works chunk by chunk in fp32 with small scratch buffers; scale 0 gives all-zero codes.
    """
    n = v.numel()
    top = float(2 ** bits - 1)
    step = chunk_len(n, v.device)
    scratch = torch.empty(step, dtype=torch.float32, device=v.device)
    u = None if noise is None else torch.empty(noise_scratch(step, v.device), dtype=torch.float32,
                                               device=v.device)
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
            f.div_(divisor)
            round_codes(f, noise, top, u)
        else:
            f.zero_()
        store_codes(f, bits, codes, out, start, n)


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
