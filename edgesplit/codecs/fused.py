"""Fused device kernels of quantize and top-k: torch.compile'd, no host sync per crossing."""
import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import on_host
from .sidecar import Sidecar
from .uniform import NOISE_OFFSET, NOISE_STEP

# Off (EDGESPLIT_COMPILE_CODECS=0): the same kernels run op by op, for a GPU where Triton fails.
COMPILE = os.environ.get("EDGESPLIT_COMPILE_CODECS", "1") != "0"
# Triton's fp32 `/` is approximate (within 2 ulp) unless inductor is told to round as eager
# does: codes are rounded quotients, so one ulp can change a code and the payload's bytes.
EXACT_DIVISION: Dict[str, Union[str, int, bool, Callable[..., Any]]] = {
    "eager_numerics.division_rounding": True}
# Graphs a kernel may have: one per bits, dtype and rounding of the run's codecs (every shape
# shares one); torch's default of 8 is below what the tests' many codecs need.
RECOMPILE_LIMIT = 64


def active(x: Tensor) -> bool:
    """Whether x takes the fused path: a non-empty tensor on the device path (base.on_host)."""
    return x.numel() > 0 and not on_host(x.device)


def _kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn compiled on its first call, for every shape (dynamic) and as one graph (a break would
    be a sync); eager on the meta device, where the tests prove that nothing reads a value on the
    host, and when COMPILE is off."""
    compiled: Optional[Callable[..., Any]] = None

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        nonlocal compiled
        if not COMPILE or args[0].device.type == "meta":
            return fn(*args)
        if compiled is None:
            config = torch._dynamo.config
            config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
            compiled = torch.compile(fn, dynamic=True, fullgraph=True, options=EXACT_DIVISION)
        return compiled(*args)
    return run


# -- bit packing, as bitpack.py lays codes out --------------------------------------------------
def _pack_small(codes: Tensor, bits: int) -> Tensor:
    """int64 codes < 2**bits (bits 1..7) as one LSB-first bit stream: 8 codes make `bits` bytes."""
    n = codes.numel()
    groups = (n + 7) // 8
    lanes = F.pad(codes, (0, groups * 8 - n)).view(groups, 8)
    word = (lanes << (torch.arange(8, device=codes.device) * bits)).sum(1, keepdim=True)
    out = (word >> (torch.arange(bits, device=codes.device) * 8)) & 0xFF
    return out.to(torch.uint8).view(-1)[:(n * bits + 7) // 8]


def _unpack_small(packed: Tensor, bits: int, n: int) -> Tensor:
    """The first n int64 codes of a bit stream made by _pack_small."""
    groups = (n + 7) // 8
    raw = F.pad(packed, (0, groups * bits - packed.numel())).view(groups, bits).to(torch.int64)
    word = (raw << (torch.arange(bits, device=packed.device) * 8)).sum(1, keepdim=True)
    return ((word >> (torch.arange(8, device=packed.device) * bits)) & ((1 << bits) - 1)) \
        .view(-1)[:n]


def pack(codes: Tensor, bits: int) -> Tensor:
    """int64 codes < 2**bits (bits 1..16) in bitpack.py's layout."""
    if bits == 8:
        return codes.to(torch.uint8)
    if bits == 16:
        return torch.stack([codes & 0xFF, codes >> 8], 1).to(torch.uint8).view(-1)
    if bits > 8:
        return torch.cat([(codes & 0xFF).to(torch.uint8), _pack_small(codes >> 8, bits - 8)])
    return _pack_small(codes, bits)


def unpack(packed: Tensor, bits: int, n: int) -> Tensor:
    """The n int64 codes of `pack`'s output."""
    if bits == 8:
        return packed.to(torch.int64)
    if bits == 16:
        pairs = packed.view(n, 2).to(torch.int64)
        return pairs[:, 0] | (pairs[:, 1] << 8)
    if bits > 8:
        return packed[:n].to(torch.int64) | (_unpack_small(packed[n:], bits - 8, n) << 8)
    return _unpack_small(packed, bits, n)


# -- min-max quantization (uniform.py's arithmetic, so the codes are the same bytes) --------------
def _quantized(v: Tensor, bits: int, noise: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """(float32 [offset, scale], packed codes, bad) of the 1-D v; bad: v holds NaN/inf or its
    range overflows float32. noise: stochastic rounding's int16 numbers (uniform.Noise)."""
    lo, hi = torch.aminmax(v)
    lo, hi = lo.float(), hi.float()
    # a tensor divisor (not a constant): inductor's exact division applies to tensor operands
    scale = (hi - lo) / torch.full_like(hi, float(2 ** bits - 1))
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi) & torch.isfinite(scale))
    f = (v.float() - lo) / scale
    f = f.round() if noise is None else f + (noise.float() + NOISE_OFFSET) * NOISE_STEP
    codes = torch.where(scale > 0, f.clamp(0.0, float(2 ** bits - 1)), 0.0).to(torch.int64)
    return torch.stack([lo, scale]), pack(codes, bits), bad


@_kernel
def quantize_payload(head: Tensor, v: Tensor, bits: int,
                     noise: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """(payload, bad) of Quantize(scale='tensor'): `head` (the header, its offset and scale
    fields last) with this tensor's offset and scale, then the codes."""
    params, body, bad = _quantized(v, bits, noise)
    return torch.cat([head[:-8], params.view(torch.uint8), body]), bad


@_kernel
def dequantize(params: Tensor, body: Tensor, bits: int, n: int, dtype: torch.dtype) -> Tensor:
    """offset + code * scale (float32, then dtype) of n packed codes; params = [offset, scale]."""
    return (unpack(body, bits, n).float() * params[1] + params[0]).to(dtype)


# -- top-k ----------------------------------------------------------------------------------------
def _keep(v: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(bool mask, ascending int64 positions, bad) of the k entries of the 1-D v of largest |v|
    in float32, the lowest indices first among equals (select.topk_select's set); bad: NaN/inf."""
    a = v.float().abs()
    t = torch.topk(a, k, sorted=False).values.min()  # the k-th largest
    above, ties = a > t, a == t
    keep = above | (ties & (torch.cumsum(ties.to(torch.int32), 0) <= k - above.sum()))
    return keep, torch.nonzero_static(keep, size=k).view(-1), ~torch.isfinite(a).all()


@_kernel
def topk_payload(head: Tensor, v: Tensor, k: int, bitmap: bool, bits: int,
                 noise: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(payload, kept mask, kept positions, bad) of TopK (bits 0: raw values) or
    TopKQuantize(scale='tensor') (`head`'s last fields the offset and scale): the header, the
    index section (a bitmap of the mask, or int32 positions), the kept values in index order."""
    keep, where, bad = _keep(v, k)
    index = pack(keep.to(torch.int64), 1) if bitmap else where.to(torch.int32).view(torch.uint8)
    kept = v[where]
    if bits == 0:
        return torch.cat([head, index, kept.view(torch.uint8)]), keep, where, bad
    params, codes, out_of_range = _quantized(kept, bits, noise)
    payload = torch.cat([head[:-8], params.view(torch.uint8), index, codes])
    return payload, keep, where, bad | out_of_range


@_kernel
def place(values: Tensor, where: Tensor, n: int) -> Tensor:
    """A zero 1-D tensor of n entries with values at the int64 positions `where`."""
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_copy(0, where, values)


# -- what a fused payload carries beside its bytes, in the process that made it ----------------
@dataclass(frozen=True)
class Made:
    """The host-side facts of a payload a fused encode made: its decoder needs no host read.
    `codec` is the encoder's settings (a decoder with others falls back to parsing the bytes)."""
    codec: Tuple[Any, ...]
    dtype: torch.dtype
    shape: Tuple[int, ...]
    head: int  # header bytes
    keep: Optional[Tensor] = None  # top-k: the kept positions, as a mask and ascending positions
    where: Optional[Tensor] = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# a fused payload's Made and its non-finite flag (a device tensor the boundary checks once a step)
_MADE: Sidecar[Tuple[Made, Tensor]] = Sidecar()


def mark(payload: Tensor, made: Made, bad: Tensor) -> Tensor:
    """payload, with `made` and its non-finite flag kept beside it in this process."""
    return _MADE.put(payload, (made, bad))


def made_by(payload: Tensor, codec: Tuple[Any, ...]) -> Optional[Made]:
    """The Made of a payload a fused encode with these settings made in this process, else None."""
    marked = _MADE.get(payload)
    return marked[0] if marked is not None and marked[0].codec == codec else None


def nonfinite(payload: Tensor) -> Optional[Tensor]:
    """The payload's non-finite flag (bool device tensor), if a fused encode made it."""
    marked = _MADE.get(payload)
    return None if marked is None else marked[1]
