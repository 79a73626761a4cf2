"""Exact top-k selection by |x| with the lowest-index tie rule, fast: sample, bracket, refine."""
import math
from typing import List, Tuple

import torch
from torch import Tensor

from .base import chunk_spans

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
    sample = v[::stride].float().abs()
    m = sample.numel()
    p = k / n
    half = SIGMAS * math.sqrt(m * p * (1 - p)) + 2
    hi_rank = math.floor(p * m - half)  # 1-based rank (largest first) for the upper bound
    lo_rank = math.ceil(p * m + half)
    if hi_rank < 1 and lo_rank > m:
        return 0.0, math.inf
    top = torch.topk(sample, min(m, lo_rank), sorted=True).values
    hi = top[hi_rank - 1].item() if hi_rank >= 1 else math.inf
    lo = top[lo_rank - 1].item() if lo_rank <= m else 0.0
    return lo, hi


def _pass(v: Tensor, mask: Tensor, lo: float, hi: float) -> Tuple[int, Tensor, Tensor]:
    """Write |v| > hi into mask; return that count and the band lo <= |v| <= hi (values, index)."""
    n = v.numel()
    step = next(iter(chunk_spans(n, v.device)))[1]
    a = torch.empty(step, dtype=torch.float32, device=v.device)
    inband = torch.empty(step, dtype=torch.bool, device=v.device)
    counts: List[Tensor] = []
    values: List[Tensor] = []
    index: List[Tensor] = []
    for start, stop in chunk_spans(n, v.device):
        f, b, m = a[:stop - start], inband[:stop - start], mask[start:stop]
        if v.dtype == torch.float32:
            torch.abs(v[start:stop], out=f)
        else:
            f.copy_(v[start:stop])
            f.abs_()
        torch.gt(f, hi, out=m)
        counts.append(torch.count_nonzero(m))
        torch.ge(f, lo, out=b)
        b.logical_xor_(m)
        idx = b.nonzero().view(-1)
        values.append(f[idx])
        index.append(idx + start)
    return int(torch.stack(counts).sum()), torch.cat(values), torch.cat(index)


def topk_mask(v: Tensor, k: int) -> Tensor:
    """Bool mask of the k entries of the 1-D finite v with the largest |v|; among entries of equal
    |v| the lowest indices win. Same set as a stable descending sort of |v| (in fp32)."""
    n = v.numel()
    mask = torch.empty(n, dtype=torch.bool, device=v.device)
    if k >= n:
        return mask.fill_(True)
    if k <= 0:
        return mask.fill_(False)
    lo, hi = _bracket(v, k)
    while True:
        above, band, index = _pass(v, mask, lo, hi)
        need = k - above
        if need < 0:  # the sample put hi too low: everything from hi up is the band
            lo, hi = hi, math.inf
        elif need > band.numel():  # lo too high: everything up to lo is the band
            lo, hi = 0.0, lo
        else:
            break
    if need == 0:
        return mask
    t = torch.kthvalue(band, band.numel() - need + 1).values
    take = band > t
    ties = (band == t).nonzero().view(-1)
    take[ties[:need - int(torch.count_nonzero(take))]] = True
    mask[index[take]] = True
    return mask
