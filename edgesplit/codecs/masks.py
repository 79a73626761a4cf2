"""Mask primitives (compare, compress, nonzero, bitmaps): numpy on CPU, where they are fast."""
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .base import chunk_spans, on_host

# torch's CPU compaction (nonzero, masked_select; the latter very slow on several threads) and
# bool-valued compares are not vectorised; numpy's are, several times faster. numpy also runs
# on one thread: torch's parallel ops stall for whole time slices when the other core is busy.
# So the host path (base.on_host) runs numpy here, the device path torch.

_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NP_RAW = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


def _host(t: Tensor) -> bool:
    return on_host(t.device)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _raw(t: Tensor) -> np.ndarray:
    """The contiguous t's elements as same-sized integers (numpy has no bfloat16)."""
    return _np(t.view(_RAW[t.element_size()]))


def minmax(v: Tensor) -> Tuple[float, float]:
    """(min, max) of the non-empty v, as float32 values (NaN when v holds one)."""
    if _host(v) and v.dtype == torch.float32:
        a = _np(v)
        parts = [(a[i:j].min(), a[i:j].max()) for i, j in chunk_spans(a.size, v.device)]
        lo, hi = np.array(parts).T  # numpy's min/max propagate NaN, Python's do not
        return float(lo.min()), float(hi.max())
    lo, hi = torch.aminmax(v)
    lo_f, hi_f = torch.stack([lo.float(), hi.float()]).tolist()
    return lo_f, hi_f


def magnitude(x: Tensor) -> Tensor:
    """|x| as a new fp32 tensor (x may be strided)."""
    if _host(x) and x.dtype == torch.float32:
        return torch.from_numpy(np.abs(_np(x)))
    return x.float().abs()


def cat(parts: List[Tensor]) -> Tensor:
    """The 1-D tensors one after the other."""
    if _host(parts[0]):
        return torch.from_numpy(np.concatenate([_raw(t) for t in parts])).view(parts[0].dtype)
    return torch.cat(parts)


def invert(mask: Tensor) -> Tensor:
    """mask = ~mask, in place."""
    if _host(mask):
        np.logical_not(_np(mask), out=_np(mask))
        return mask
    return mask.logical_not_()


def copy_into(out: Tensor, src: Tensor) -> None:
    """out[:] = src, for contiguous tensors of one dtype."""
    if _host(out):
        _raw(out)[...] = _raw(src)
    else:
        out.copy_(src)


def take(x: Tensor, where: Tensor) -> Tensor:
    """x[where] for the contiguous 1-D x and int64 positions (a new tensor, x's dtype)."""
    if _host(x):
        return torch.from_numpy(_raw(x)[_np(where)]).view(x.dtype)
    return x[where]


def put(out: Tensor, where: Tensor, values: Tensor) -> Tensor:
    """out[where] = values for the 1-D out and values (one dtype) and int64 positions."""
    if _host(out):
        _raw(out)[_np(where)] = _raw(values)
        return out
    return out.index_copy_(0, where, values)


def merge_into(out: Tensor, ranks: Tensor, inserted: Tensor, rest: Tensor) -> None:
    """The uint8 out (len(ranks) + len(rest) values' bytes, at any byte offset) = values with
    `inserted` at the ascending int64 `ranks` and `rest`, in order, everywhere else."""
    k = ranks.numel() + rest.numel()
    if _host(out):  # numpy writes the (possibly unaligned) payload bytes in place
        slots = _np(out).view(np.dtype(_NP_RAW[inserted.element_size()]))
        gaps = np.ones(k, dtype=bool)
        gaps[_np(ranks)] = False
        slots[_np(ranks)] = _raw(inserted)
        slots[gaps] = _raw(rest)
        return
    values = torch.empty(k, dtype=inserted.dtype, device=out.device)
    others = torch.ones(k, dtype=torch.bool, device=out.device)
    others[ranks] = False
    values[ranks] = inserted
    values[others] = rest
    out.copy_(values.view(torch.uint8))


def abs_into(x: Tensor, out: Tensor) -> Tensor:
    """out = |x| for fp32 x and out (numpy on CPU: one thread, no waits on a busy second core)."""
    if _host(x):
        np.abs(_np(x), out=_np(out))
        return out
    return torch.abs(x, out=out)


def greater(f: Tensor, t: float, out: Tensor, equal: bool = False) -> Tensor:
    """out (bool) = f > t, or f >= t with `equal`, for the fp32 f and the float32 value t."""
    if _host(f):
        (np.greater_equal if equal else np.greater)(_np(f), np.float32(t), out=_np(out))
        return out
    return (torch.ge if equal else torch.gt)(f, t, out=out)


def count(mask: Tensor) -> int:
    """The number of True entries of a bool tensor."""
    return int(np.count_nonzero(_np(mask))) if _host(mask) else int(torch.count_nonzero(mask))


def _sparse_nonzero(m: np.ndarray) -> Optional[np.ndarray]:
    """np.flatnonzero(m) where a few percent of the bool m is set, else None. numpy finds the
    entries of a bool array with at most 10% set by a memchr loop, about three times slower than
    its branch-free loop on scattered entries (top-k masks at ratios 0.03..0.1): padded with
    enough True entries to pass 10%, m takes the fast loop."""
    n = m.size
    c = int(np.count_nonzero(m))
    if not 0.03 * n < c <= 0.1 * n:
        return None
    buf = np.empty(n + int((0.1 * n - c) / 0.9) + 64, dtype=bool)
    buf[:n] = m
    buf[n:] = True
    return np.flatnonzero(buf)[:c]


def flatnonzero(mask: Tensor) -> Tensor:
    """The ascending int64 positions of the True entries of the 1-D bool mask."""
    if _host(mask):
        m = _np(mask)
        where = _sparse_nonzero(m)
        return torch.from_numpy(np.flatnonzero(m) if where is None else where)
    return mask.nonzero().view(-1)


def compress(x: Tensor, keep: Tensor) -> Tensor:
    """x[keep] for the contiguous 1-D x and bool keep of its length (any dtype, bytes moved)."""
    if _host(x):
        raw, m = _np(x.view(_RAW[x.element_size()])), _np(keep)
        where = _sparse_nonzero(m)
        return torch.from_numpy(np.compress(m, raw) if where is None else raw[where]).view(x.dtype)
    return torch.masked_select(x, keep)


def pack_mask_into(mask: Tensor, out: Tensor) -> None:
    """The 1-D bool mask as a bitmap into the uint8 out: ceil(n/8) bytes, bit i = entry i, LSB
    first."""
    if _host(mask):
        _np(out)[...] = np.packbits(_np(mask), bitorder="little")
        return
    flags = mask.view(torch.uint8)
    n = flags.numel()
    if n % 8 or flags.storage_offset() % 8:
        padded = torch.zeros((n + 7) // 8 * 8, dtype=torch.uint8, device=mask.device)
        padded[:n] = flags
        flags = padded
    out.copy_(((flags.view(torch.int64) * _GATHER_BITS) >> 56).to(torch.uint8))


def unpack_mask(bitmap: Tensor, n: int) -> Tensor:
    """The first n entries (bool) of a bitmap made by pack_mask_into."""
    if _host(bitmap):
        return torch.from_numpy(np.unpackbits(_np(bitmap), count=n, bitorder="little")) \
            .view(torch.bool)
    words = bitmap.to(torch.int64).mul_(_SPREAD).bitwise_and_(_BIT_J)
    words.add_(0x7F * _SPREAD).bitwise_right_shift_(7).bitwise_and_(_SPREAD)
    return words.view(torch.bool)[:n]


def bitmap_ranks(bitmap: Tensor, positions: Tensor) -> Tensor:
    """For each of the int64 positions (set bits of the bitmap made by pack_mask_into), the number
    of set bits before it: its rank among the kept entries."""
    if _host(bitmap):
        nb = bitmap.numel()
        raw = np.zeros((nb + 7) // 8 * 8, dtype=np.uint8)
        raw[:nb] = _np(bitmap)
        words = raw.view("<u8")
        prior = np.zeros(words.size, dtype=np.int64)
        np.cumsum(np.bitwise_count(words[:-1]), out=prior[1:])
        p = _np(positions)
        below = words[p >> 6] & ((np.uint64(1) << (p & 63).astype(np.uint64)) - np.uint64(1))
        return torch.from_numpy(prior[p >> 6] + np.bitwise_count(below))
    table = _POPCOUNT.to(bitmap.device)
    ones = table[bitmap.to(torch.int64)]
    before = torch.cumsum(ones, 0) - ones
    byte = bitmap[positions >> 3].to(torch.int64) & ((1 << (positions & 7)) - 1)
    return before[positions >> 3] + table[byte]


def first_occurrences(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(the distinct values of the 1-D int64 x (in [0, 2**32)) ascending, the index of each one's
    first occurrence in x). On the host path up to 2**15 values: two stable 16-bit radix sorts
    (numpy's argsort of uint16), three times faster than torch.unique there; beyond, torch.unique
    (numpy's unique sorts by a merge sort, five times slower at 10**5 values)."""
    if _host(x) and x.numel() <= 1 << 15:
        a = _np(x)
        low = np.argsort((a & 0xFFFF).astype(np.uint16), kind="stable")
        order = low[np.argsort((a[low] >> 16).astype(np.uint16), kind="stable")]
        ordered = a[order]
        new = np.ones(ordered.size, dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=new[1:])  # repeats: first drawn first
        return torch.from_numpy(ordered[new]), torch.from_numpy(order[new])
    values, inverse = torch.unique(x, return_inverse=True)
    first = torch.full((values.numel(),), x.numel(), dtype=torch.int64, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(x.numel(), device=x.device), reduce="amin")
    return values, first


def order_stats(x: Tensor, ranks: List[int]) -> List[float]:
    """The values of rank r (0-based, ascending) of the 1-D fp32 x, for each r in ranks."""
    if _host(x):
        part = np.partition(_np(x), ranks)
        return [float(part[r]) for r in ranks]
    return [torch.kthvalue(x, r + 1).values.item() for r in ranks]


def zeros(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero 1-D tensor. On CPU its memory comes from numpy, which asks for huge pages for large
    arrays: first writes to a fresh 32 MiB cost about a fifth of torch.zeros' page faults."""
    if on_host(device) and n:
        size = torch.empty((), dtype=dtype).element_size()
        return torch.from_numpy(np.zeros(n * size, dtype=np.uint8)).view(dtype)
    return torch.zeros(n, dtype=dtype, device=device)


# 8 bytes b_j in {0, 1} (little-endian int64) times this puts b_j at bit 56 + j, carry-free.
_GATHER_BITS = 0x0102040810204080
# A byte b times _SPREAD repeats it in all 8 bytes of an int64; keeping bit j of byte j, adding
# 0x7f per byte (no carries) and shifting by 7 leaves bit j of b as byte j (0 or 1).
_SPREAD = 0x0101010101010101
_BIT_J = 0x8040201008040201 - (1 << 64)
# set bits of each byte value
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
