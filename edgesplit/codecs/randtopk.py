"""RandTopK: top-k with exploration (Zheng et al., IJCAI 2023): some kept entries drawn at random."""
import math
from fractions import Fraction
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .base import Crossing, chunk_spans, encode_input
from .header import BITMAP, RANDTOPK, TOPK_FIELDS, encode_header, new_payload
from .masks import bitmap_ranks, compress, first_occurrences, flatnonzero
from .masks import invert, merge_into, pack_mask_into, take
from .select import Cut, _magnitude, _scratch, cut_masks, topk_select
from .topk import TopK, check_values, index_format, k_for

__all__ = ["RandTopK", "explore", "explore_count"]


def check_explore(name: str, explore: object) -> float:
    """`explore` as a float in [0, 1], or a one-line ValueError."""
    if isinstance(explore, bool) or not isinstance(explore, (int, float)) \
            or not 0 <= explore <= 1:
        raise ValueError(f"{name}: explore must be in [0, 1], got {explore!r}")
    return float(explore)


def explore_count(explore: float, k: int) -> int:
    """Entries of k drawn at random: floor(explore * k), explore read as its shortest decimal."""
    return math.floor(Fraction(repr(explore)) * k)


def _last_tie(v: Tensor, cut: Cut, nonneg: bool) -> int:
    """The flat index of the last entry with |v| == cut.t that the cut keeps (cut.ties > 0)."""
    f, _ = _scratch(v)
    left = cut.ties
    for start, stop in chunk_spans(v.numel(), v.device):
        ties = flatnonzero(_magnitude(v[start:stop], f[:stop - start], nonneg) == cut.t)
        if ties.numel() >= left:
            return start + int(ties[left - 1])
        left -= ties.numel()
    raise AssertionError("the cut keeps more ties than the tensor holds")


def _outside(v: Tensor, cut: Cut, last_tie: int, draws: Tensor) -> Tuple[Tensor, Tensor]:
    """(flat indices, values) of the draws that the cut does not keep, in draw order (last_tie:
    the last kept index with |v| == cut.t when the cut keeps only some of those)."""
    values = take(v, draws)
    a = values.float().abs()
    if cut.ties == 0:  # the cut keeps |v| > t
        out = a <= cut.t
    else:  # and all (-1) or the first cut.ties entries with |v| == t
        out = a < cut.t
        if cut.ties > 0:
            out |= (a == cut.t) & (draws > last_tie)
    return compress(draws, out), compress(values, out)


def _first_distinct(draws: Tensor, values: Tensor, count: int) -> Tuple[Tensor, Tensor]:
    """The first `count` distinct draws (in draw order; all if there are fewer) and their values,
    by ascending draw."""
    pos, first = first_occurrences(draws)
    if count < first.numel():  # drop the distinct values drawn last
        drawn = torch.zeros(draws.numel(), dtype=torch.bool, device=draws.device)
        drawn[first] = True
        last = int(flatnonzero(drawn)[count - 1])  # the count-th distinct value's draw
        keep = first <= last
        pos, first = compress(pos, keep), compress(first, keep)
    return pos, take(values, first)


def _dense(v: Tensor, cut: Cut, nonneg: bool, count: int, gen: torch.Generator) -> Tensor:
    """`count` flat indices drawn uniformly without repeats from the entries the cut does not keep:
    the first `count` of a random permutation of them (for counts near their number, where
    repeated draws would mostly repeat)."""
    outside = torch.cat([flatnonzero(invert(mask)).add_(start)
                         for start, _, mask in cut_masks(v, cut, nonneg)])
    pick = torch.randperm(outside.numel(), generator=gen, device=v.device)[:count]
    return outside[pick].sort().values


def explore(v: Tensor, cut: Cut, nonneg: bool, count: int, outside: int,
            crossing: Optional[Crossing]) -> Tuple[Tensor, Tensor]:
    """(flat indices ascending, their values) of `count` entries drawn uniformly without
    repeats from the `outside` entries of v that the cut does not keep: uniform draws over [0, n)
    from the crossing's generator (a batch that very likely suffices, another if not), those the
    cut keeps and repeats dropped, the first `count` taken (a uniform random subset); or a random
    permutation of the outside entries when count is over a quarter of them."""
    n = v.numel()
    chosen = torch.empty(0, dtype=torch.int64, device=v.device)
    values = v[:0]
    if count == 0:
        return chosen, values
    gen = (crossing or Crossing()).generator(v.device)
    if 4 * count > outside:
        chosen = _dense(v, cut, nonneg, count, gen)
        return chosen, v[chosen]
    last_tie = _last_tie(v, cut, nonneg) if cut.ties > 0 else -1
    draws, drawn = chosen, values
    while chosen.numel() < count:
        need = count - chosen.numel()
        batch = math.ceil(need * n / (outside - chosen.numel()) * 1.1) + 64
        more, more_values = _outside(v, cut, last_tie, torch.randint(
            0, n, (batch,), generator=gen, device=v.device))
        draws, drawn = torch.cat([draws, more]), torch.cat([drawn, more_values])
        chosen, values = _first_distinct(draws, drawn, count)
    return chosen, values


class RandTopK(TopK):
    """Randomized top-k: k = ceil(ratio*n) entries (at least 1) are kept, floor(explore*k) of them
    drawn uniformly at random (from the crossing's generator) from the entries outside the top
    set, the rest the largest |x| (ties by lowest flat index). TopK's wire format (bitmap or int32
    indices, then the kept values in flat index order) under its own codec id; decode and
    support_of are TopK's."""

    name = "RandTopK"
    code, fields = RANDTOPK, TOPK_FIELDS
    random = True
    fused_bits = None  # its own encode: no fused path

    def __init__(self, ratio: float = 0.1, explore: float = 0.1) -> None:
        super().__init__(ratio)
        self.explore = check_explore(self.name, explore)

    def __repr__(self) -> str:
        return f"RandTopK(ratio={self.ratio}, explore={self.explore})"

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        x, v = encode_input(self.name, x, support)
        n = v.numel()
        k = k_for(self.ratio, n)
        extra = explore_count(self.explore, k)
        nonneg = check_values(self.name, v)
        # the top set: the k - extra largest |v|, their values in flat order (none: all explored)
        cut, top = topk_select(v, k - extra, nonneg) if k > extra else (Cut(math.inf, 0), v[:0])
        rand, rand_values = explore(v, cut, nonneg, extra, n - (k - extra), crossing)
        fmt, index_bytes = index_format(n, k)
        header = encode_header(self.code, x.dtype, tuple(x.shape), self.fields.pack(fmt, k))
        payload = new_payload(header, index_bytes + k * v.element_size(), x.device)
        body = payload[len(header):]
        where: List[Tensor] = []
        for start, stop, mask in cut_masks(v, cut, nonneg):
            lo, hi = torch.searchsorted(rand, torch.tensor([start, stop], device=v.device)).tolist()
            mask[rand[lo:hi] - start] = True
            if fmt == BITMAP:
                pack_mask_into(mask, body[start // 8:(stop + 7) // 8])
            else:
                where.append(flatnonzero(mask).add_(start).to(torch.int32))
        if where:
            kept = torch.cat(where)
            body[:index_bytes].copy_(kept.view(torch.uint8))
            ranks = torch.searchsorted(kept, rand.to(torch.int32))
        else:
            ranks = bitmap_ranks(body[:index_bytes], rand)
        # the kept values in flat order: the explored ones at their ranks, the top ones around them
        merge_into(body[index_bytes:], ranks, rand_values, top)
        return payload
