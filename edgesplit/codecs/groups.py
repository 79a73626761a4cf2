"""Per-channel and per-group min-max scales: the grouping, its parameters, codes and values."""
import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from edgesplit.options import Scale, options

from .base import NonFiniteError, aligned, chunk_len, on_host
from .bitpack import code_dtype, packed_size, unpack_codes_from
from .header import CHANNEL, GROUP, check_quant_params
from .uniform import Noise, noise_scratch, round_codes, store_codes

SCALES = options(Scale)
SPREAD = 64
MODES = {"channel": CHANNEL, "group": GROUP}

# One piece of a chunk: local [lo, hi) viewed as `shape`, its parameters [a, b) viewed as pshape.
Piece = Tuple[int, int, Tuple[int, ...], int, int, Tuple[int, ...]]


@dataclass(frozen=True)
class Groups:
    """How the n flat elements of a tensor share (offset, scale) pairs.

    channel: the tensor as (outer, count, inner) (count = dim 1 of an N-D tensor, N >= 2; a 1-D
    tensor is one channel); pair i covers channel i of every sample.
    group: runs of `inner` consecutive flat elements (the last one shorter); count = ceil(n/inner).
    """

    mode: int
    n: int
    count: int
    inner: int

    @property
    def unit(self) -> int:
        """Elements after which the pattern of pairs starts again: a sample or a group."""
        return self.count * self.inner if self.mode == CHANNEL else self.inner

    @property
    def params_bytes(self) -> int:
        """The float32 offsets and scales: 8 bytes per pair."""
        return 8 * self.count

    def body_bytes(self, bits: int) -> int:
        """Bytes of the parameters and the packed codes."""
        return self.params_bytes + packed_size(self.n, bits)


def channel_groups(shape: Tuple[int, ...]) -> Groups:
    """The channel grouping (dim 1) of a tensor of this shape; 1-D or 0-D: one channel."""
    n = math.prod(shape)
    if len(shape) < 2:
        return Groups(CHANNEL, n, 1, n)
    return Groups(CHANNEL, n, shape[1], math.prod(shape[2:]))


def flat_groups(n: int, size: int) -> Groups:
    """Groups of `size` consecutive elements of n."""
    return Groups(GROUP, n, -(-n // size), size)


def spans(g: Groups, device: torch.device) -> Iterator[Tuple[int, int]]:
    """Chunks [start, stop) that start at multiples of 8 and of the grouping's unit: on the host
    path about base.CPU_CHUNK elements each, on the device path one piece."""
    if g.n == 0:
        return
    unit = math.lcm(g.unit, 8)
    step = max(unit, chunk_len(g.n, device) // unit * unit) if on_host(device) else g.n
    for start in range(0, g.n, step):
        yield start, min(g.n, start + step)


def spread(g: Groups) -> bool:
    """Whether a channel's pair is repeated over its elements of a sample (a table of one sample's
    size): broadcasting a pair over fewer than SPREAD contiguous elements is several times
    slower on CPU (a 4x4 feature map has 16)."""
    return g.mode == CHANNEL and g.inner < SPREAD


def tables(g: Groups, *params: Tensor) -> Tuple[Tensor, ...]:
    """The per-pair parameters as pieces() indexes them: repeated per element if spread(g)."""
    return tuple(p.repeat_interleave(g.inner) for p in params) if spread(g) else params


def pieces(g: Groups, start: int, stop: int) -> List[Piece]:
    """The chunk [start, stop) as views whose parameters (tables()) broadcast (see Piece)."""
    m = stop - start
    if spread(g):
        return [(0, m, (m // g.unit, g.unit), 0, g.unit, (1, g.unit))]
    if g.mode == CHANNEL:
        return [(0, m, (m // g.unit, g.count, g.inner), 0, g.count, (1, g.count, 1))]
    first, full = start // g.inner, m // g.inner
    out: List[Piece] = []
    if full:
        out.append((0, full * g.inner, (full, g.inner), first, first + full, (full, 1)))
    if m > full * g.inner:
        out.append((full * g.inner, m, (1, m - full * g.inner), first + full, first + full + 1, (1, 1)))
    return out


def group_params(name: str, v: Tensor, g: Groups, bits: int) -> Tuple[Tensor, Tensor]:
    """(offsets, scales): float32 tensors of g.count on v's device, offset = min of the group,
    scale = (max - min) / (2**bits - 1), computed on the CPU (as minmax_params). NonFiniteError
    when v holds NaN/inf; an empty group has offset 0 and scale 0."""
    if g.n == 0:
        zeros = torch.zeros(g.count, dtype=torch.float32, device=v.device)
        return zeros, zeros.clone()
    if spread(g):  # over the samples (columns of contiguous rows), then within each channel
        rows = v.view(-1, g.unit)
        lo = rows.amin(dim=0).view(g.count, -1).amin(dim=1)
        hi = rows.amax(dim=0).view(g.count, -1).amax(dim=1)
    elif g.mode == CHANNEL:  # within each (sample, channel) row, then over the samples
        rows = v.view(-1, g.inner)
        lo = rows.amin(dim=1).view(-1, g.count).amin(dim=0)
        hi = rows.amax(dim=1).view(-1, g.count).amax(dim=0)
    else:  # amin and amax apart: torch's aminmax along a dim is several times slower on CPU
        full = g.n // g.inner * g.inner
        parts = [v[:full].view(-1, g.inner)] if full else []
        if full < g.n:
            parts.append(v[full:].view(1, -1))
        lo = torch.cat([r.amin(dim=1) for r in parts])
        hi = torch.cat([r.amax(dim=1) for r in parts])
    lo, hi = lo.float().cpu(), hi.float().cpu()
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    if bool(bad.any()):
        i = int(torch.argmax(bad.to(torch.uint8)))
        raise NonFiniteError(f"{name}: the tensor to encode holds NaN or inf (group {i}: min "
                             f"{float(lo[i])}, max {float(hi[i])})")
    scale = (hi - lo) / float(2 ** bits - 1)
    if not bool(torch.isfinite(scale).all()):
        i = int(torch.argmin(torch.isfinite(scale).to(torch.uint8)))
        raise ValueError(f"{name}: value range [{float(lo[i])}, {float(hi[i])}] of group {i} "
                         f"overflows float32")
    return lo.to(v.device), scale.to(v.device)


def write_params(offsets: Tensor, scales: Tensor, out: Tensor) -> None:
    """The float32 offsets, then the scales, into the 8*count bytes of out."""
    c = offsets.numel()
    out[:4 * c].copy_(offsets.view(torch.uint8))
    out[4 * c:8 * c].copy_(scales.view(torch.uint8))


def read_params(name: str, body: Tensor, g: Groups, bits: int,
                dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """(offsets, scales) from the start of a body of the right size, checked (check_quant_params)."""
    c = g.count
    offsets, scales = aligned(body[:4 * c], torch.float32), aligned(body[4 * c:8 * c], torch.float32)
    check_quant_params(name, dtype, bits, offsets, scales)
    return offsets, scales


def quantize_groups_into(v: Tensor, g: Groups, bits: int, offsets: Tensor, scales: Tensor,
                         out: Tensor, noise: Optional[Noise] = None) -> None:
    """Codes of the 1-D v with each group's offset and scale (round, or floor(. + u) with noise),
    packed into out; a group with scale 0 gets codes 0."""
    top = float(2 ** bits - 1)
    offsets, divisors = tables(g, offsets, torch.where(scales > 0, scales, torch.ones_like(scales)))
    step = max((b - a for a, b in spans(g, v.device)), default=0)
    f_all = torch.empty(step, dtype=torch.float32, device=v.device)
    u = None if noise is None else torch.empty(noise_scratch(step, v.device), dtype=torch.float32,
                                               device=v.device)
    codes = torch.empty(step, dtype=code_dtype(bits), device=v.device)
    for start, stop in spans(g, v.device):
        f, x = f_all[:stop - start], v[start:stop]
        for lo, hi, shape, a, b, pshape in pieces(g, start, stop):
            fv, xv = f[lo:hi].view(shape), x[lo:hi].view(shape)
            off, div = offsets[a:b].view(pshape), divisors[a:b].view(pshape)
            if v.dtype == torch.float32:
                torch.sub(xv, off, out=fv)
            else:
                fv.copy_(xv)
                fv.sub_(off)
            fv.div_(div)
        round_codes(f, noise, top, u)
        store_codes(f, bits, codes, out, start, g.n)


def dequantize_groups(packed: Tensor, g: Groups, bits: int, offsets: Tensor, scales: Tensor,
                      dtype: torch.dtype) -> Tensor:
    """The 1-D tensor offset + code * scale (fp32, then dtype) of each group's packed codes."""
    out = torch.empty(g.n, dtype=dtype, device=packed.device)
    offsets, scales = tables(g, offsets, scales)
    step = max((b - a for a, b in spans(g, packed.device)), default=0)
    scratch = None if dtype == torch.float32 else torch.empty(
        step, dtype=torch.float32, device=packed.device)
    for start, stop in spans(g, packed.device):
        codes = unpack_codes_from(packed, bits, g.n, start, stop - start)
        f = out[start:stop] if scratch is None else scratch[:stop - start]
        for lo, hi, shape, a, b, pshape in pieces(g, start, stop):
            fv = f[lo:hi].view(shape)
            torch.mul(codes[lo:hi].view(shape), scales[a:b].view(pshape), out=fv)
            fv.add_(offsets[a:b].view(pshape))
        if scratch is not None:
            out[start:stop].copy_(f)
    return out
