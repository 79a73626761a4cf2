"""Exact top-k selection by |x| with the lowest-index tie rule, fast: sample, bracket, refine."""
import math
from typing import Iterator, List, NamedTuple, Tuple

import torch
from torch import Tensor

from .base import chunk_len, chunk_spans
from .masks import abs_into, cat, compress, count, flatnonzero, greater, invert, magnitude
from .masks import order_stats

SAMPLE = 1 << 16  # sample size used to bracket the k-th largest |x|
SMALL = 1 << 17  # below this many elements, skip the sample: the whole tensor is the band
SIGMAS = 5.0  # half-width of the bracket in binomial standard deviations


def _bracket(v: Tensor, k: int) -> Tuple[float, float]:
    """(lo, hi) with, very likely, #(|v| > hi) <= k <= #(|v| >= lo), from a strided sample."""
    n = v.numel()
    if n < SMALL:
        return 0.0, math.inf
    stride = n // SAMPLE
    stride -= 1 - stride % 2  # odd: does not alias power-of-two tensor dims
    sample = magnitude(v[::stride])
    m = sample.numel()
    p = k / n
    half = SIGMAS * math.sqrt(m * p * (1 - p)) + 2
    hi_rank = math.floor(p * m - half)  # 1-based rank (largest first) for the upper bound
    lo_rank = math.ceil(p * m + half)
    if hi_rank < 1 and lo_rank > m:
        return 0.0, math.inf
    ranks = [m - r for r in (hi_rank, lo_rank) if 1 <= r <= m]  # ascending, 0-based
    stats = dict(zip(ranks, order_stats(sample, ranks)))
    hi = stats[m - hi_rank] if hi_rank >= 1 else math.inf
    lo = stats[m - lo_rank] if lo_rank <= m else 0.0
    return lo, hi


def _magnitude(x: Tensor, f: Tensor, nonneg: bool) -> Tensor:
    """|x| in fp32: x itself when it is fp32 and known >= 0, else written into f."""
    if x.dtype == torch.float32:
        return x if nonneg else abs_into(x, f)
    return f.copy_(x) if nonneg else f.copy_(x).abs_()


def _scratch(v: Tensor) -> Tuple[Tensor, Tensor]:
    """An fp32 and a bool buffer of one chunk's size."""
    step = chunk_len(v.numel(), v.device)
    return (torch.empty(step, dtype=torch.float32, device=v.device),
            torch.empty(step, dtype=torch.bool, device=v.device))


def _candidates(v: Tensor, lo: float, nonneg: bool) -> Tensor:
    """The entries with |v| >= lo, in flat index order: one chunked pass."""
    if lo <= 0:
        return v
    f, m = _scratch(v)
    values: List[Tensor] = []
    for start, stop in chunk_spans(v.numel(), v.device):
        x, fc, mc = v[start:stop], f[:stop - start], m[:stop - start]
        values.append(compress(x, greater(_magnitude(x, fc, nonneg), lo, mc, equal=True)))
    return cat(values)


class Cut(NamedTuple):
    """The kept set: all entries with |v| > t, then the first `ties` (lowest flat index) of those
    with |v| == t; ties == -1: all of those. t < 0: everything."""

    t: float
    ties: int


def _keep(a: Tensor, k: int, hi: float) -> Tuple[Cut, Tensor]:
    """(cut, bool mask) of the k largest of the non-negative fp32 a, lowest index first among
    equals, given that, very likely, #(a > hi) <= k."""
    out = torch.empty(a.shape, dtype=torch.bool, device=a.device)
    above = count(greater(a, hi, out))
    if above > k:  # hi too low: the whole of a is the band
        above, band = 0, a
    else:
        band = compress(a, invert(out))
    need = k - above
    if need == 0:
        return Cut(hi, 0), invert(out)
    t = order_stats(band, [band.numel() - need])[0]
    keep = greater(a, t, out, equal=True)
    if count(keep) == k:
        return Cut(t, -1), keep
    ties = flatnonzero(a == t)  # more ties at t than places left: lowest index first
    keep = greater(a, t, out)
    ties = ties[:k - count(keep)]
    keep[ties] = True
    return Cut(t, ties.numel()), keep


def topk_select(v: Tensor, k: int, nonneg: bool = False) -> Tuple[Cut, Tensor]:
    """(cut, values) of the k entries of the 1-D finite v with the largest |v| (in fp32; among
    equals the lowest indices win: a stable descending sort's first k); values in flat index
    order. nonneg: v is known to be >= 0 (no abs needed)."""
    if k >= v.numel():
        return Cut(-1.0, -1), v
    lo, hi = _bracket(v, k)
    values = _candidates(v, lo, nonneg)
    if values.numel() < k:  # the sample put lo too high: everything is a candidate
        values = v
    cut, keep = _keep(magnitude(values), k, hi)
    return cut, compress(values, keep)


def cut_masks(v: Tensor, cut: Cut, nonneg: bool = False) -> Iterator[Tuple[int, int, Tensor]]:
    """(start, stop, bool mask of the kept entries in v[start:stop]) chunk by chunk; a mask is
    scratch, overwritten by the next one."""
    f, m = _scratch(v)
    left = cut.ties
    for start, stop in chunk_spans(v.numel(), v.device):
        x, fc, mc = v[start:stop], f[:stop - start], m[:stop - start]
        if cut.t < 0:
            yield start, stop, mc.fill_(True)
            continue
        a = _magnitude(x, fc, nonneg)
        if left < 0:
            yield start, stop, greater(a, cut.t, mc, equal=True)
            continue
        ties = flatnonzero(a == cut.t)[:left] if left else None
        greater(a, cut.t, mc)
        if ties is not None:
            mc[ties] = True
            left -= ties.numel()
        yield start, stop, mc
