"""The codec interface: encode(tensor) -> payload (flat uint8 wire form), decode(payload)."""
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from .sidecar import Sidecar


class NonFiniteError(ValueError):
    """The tensor to encode holds NaN or inf."""


@dataclass(frozen=True)
class Crossing:
    """Which crossing a payload belongs to, for codecs that draw random numbers or keep state
    per sample. Both ends of a boundary build the same Crossing for the same micro-batch."""

    ids: Optional[Tensor] = None  # int64 dataset indices of the micro-batch's samples, in order
    key: int = 0  # seed of this crossing's draws: (seed, step, boundary, pass, micro-batch)
    update: bool = False  # a training crossing's one pass: stateful codecs update their state

    def generator(self, device: torch.device) -> torch.Generator:
        """A generator on `device` seeded by `key`: the same draws wherever this crossing is
        encoded (gpipe or dist, recomputed or resumed) on the same kind of device."""
        return torch.Generator(device=device).manual_seed(self.key)


class Codec(ABC):
    """One wire format. A payload is a 1-D uint8 tensor on the input's device, header included:
    its numel is exactly the bytes that cross the link.

    `support` (a bool tensor of the input's shape) restricts a codec to the positions a forward
    payload kept: encode sends only x[support] and decode scatters them back (zeros elsewhere).
    Both sides of a boundary know the support, so it never travels with the gradient.

    `crossing` says which micro-batch of which step a payload is: codecs that draw random
    numbers seed them from its key (`random`), codecs with per-sample state index it by its ids
    (`per_sample`). None: key 0, no ids, no update (benchmarks, evaluation).
    """

    random = False  # draws from crossing.key
    per_sample = False  # needs crossing.ids on both ends
    mirrors = False  # the sender decodes its own payload too, so its state follows the receiver's

    @abstractmethod
    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        """Wire form of x (any float dtype, contiguous or not)."""

    @abstractmethod
    def decode(self, payload: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        """The tensor a payload stands for, in the encoded tensor's shape and dtype."""

    def support_of(self, payload: Tensor) -> Optional[Tensor]:
        """Bool mask of the positions the payload keeps; None when it keeps all (dense codecs)."""
        return None

    def state_dict(self) -> Dict[str, Any]:
        """What a stateful codec carries from one crossing to the next (tensors and numbers, so
        a checkpoint holds it); nothing for a stateless one."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what state_dict() returned."""

    def coded_bytes(self, payload: Tensor) -> int:
        """The payload's bytes before a lossless entropy stage (itself without one)."""
        return payload.numel()

    def state_bytes(self) -> int:
        """Bytes of the per-sample state this codec holds (0 for a stateless one)."""
        return 0

    def observe(self, x: Tensor, crossing: Crossing) -> None:
        """x crossed raw (the compressor's warm-up): a per-sample codec records it."""


# The codecs take one of two paths, by the tensor's device: the host path on CPU (numpy
# primitives, cache-sized chunks, uint16 views) and the device path elsewhere (torch ops only,
# the whole tensor in one piece). Both write the same bytes. False sends CPU tensors down the
# device path too: the tests run the code a GPU runs that way, on machines without one.
HOST_PATH = True

# Elements per chunk on CPU: fp32 scratch of a chunk stays in cache (and no large temporaries
# are allocated, whose page faults cost as much as the arithmetic).
CPU_CHUNK = 1 << 20


def on_host(device: torch.device) -> bool:
    """Whether tensors on `device` take the host path (see HOST_PATH)."""
    return HOST_PATH and device.type == "cpu"


def chunk_len(n: int, device: torch.device) -> int:
    """Elements of the largest chunk chunk_spans gives (0 when n is 0): the scratch size."""
    return min(n, CPU_CHUNK) if on_host(device) else n


def chunk_spans(n: int, device: torch.device) -> Iterator[Tuple[int, int]]:
    """(start, stop) ranges covering [0, n); starts are multiples of 8 (bit-packing groups)."""
    step = max(chunk_len(n, device), 1)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def flat(x: Tensor) -> Tensor:
    """x as a contiguous 1-D tensor (a view when x is contiguous, a copy otherwise)."""
    return x.contiguous().view(-1)


def aligned(raw: Tensor, dtype: torch.dtype) -> Tensor:
    """Bytes of a payload slice viewed as dtype (copied when the offset is unaligned)."""
    size = torch.empty((), dtype=dtype).element_size()
    if raw.storage_offset() % size:
        raw = raw.clone()
    return raw.view(dtype)


def check_float(name: str, x: Tensor) -> None:
    """One-line TypeError unless x is a float tensor of a dtype the header knows."""
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"{name}: expected a float32/float16/bfloat16/float64 tensor, "
                        f"got {x.dtype}")


def check_finite(name: str, lo: float, hi: float) -> None:
    """Raise NonFiniteError when a reduction (min/max, which propagate NaN) is not finite."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError(f"{name}: the tensor to encode holds NaN or inf "
                             f"(min {lo}, max {hi})")


# a support mask's ascending int64 positions, where a fused top-k payload made both
_KEPT_POSITIONS: Sidecar[Tensor] = Sidecar()


def kept_support(mask: Tensor, where: Tensor) -> Tensor:
    """A support mask with its ascending int64 positions kept beside it (a fused top-k
    payload's), so a gradient codec compacts along it and scatters back with no host read."""
    return _KEPT_POSITIONS.put(mask, where)


def support_positions(support: Tensor) -> Optional[Tensor]:
    """The positions kept_support keeps beside a support mask, else None."""
    return _KEPT_POSITIONS.get(support)


def encode_input(name: str, x: Tensor, support: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """(x or x[support], the same as a contiguous 1-D tensor): what an encode works on, after
    checking the dtype and the support mask."""
    check_float(name, x)
    if support is not None:
        if support.dtype != torch.bool or tuple(support.shape) != tuple(x.shape):
            raise ValueError(f"{name}: support must be a bool tensor of shape {tuple(x.shape)}, "
                             f"got {support.dtype} of shape {tuple(support.shape)}")
        where = support_positions(support)
        x = x[support] if where is None else x.reshape(-1)[where]
    return x, flat(x)


def scatter_support(name: str, values: Tensor, support: Optional[Tensor]) -> Tensor:
    """values itself, or values scattered into zeros of the support's shape."""
    if support is None:
        return values
    if support.dtype != torch.bool:
        raise ValueError(f"{name}: support must be a bool tensor, got {support.dtype}")
    out = torch.zeros(support.shape, dtype=values.dtype, device=values.device)
    where = support_positions(support)
    if where is not None:  # its count is host metadata: no read of the mask
        if values.dim() != 1 or values.numel() != where.numel():
            raise ValueError(f"{name}: payload holds {values.numel()} values but the support "
                             f"has {where.numel()} positions")
        return out.view(-1).index_copy_(0, where, values).view(support.shape)
    count = int(torch.count_nonzero(support))
    if values.dim() != 1 or values.numel() != count:
        raise ValueError(f"{name}: payload holds {values.numel()} values but the support "
                         f"has {count} positions")
    out[support] = values
    return out
