"""Resident training data (`data.device=cuda`): the whole set on one device, augmented there per batch."""
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from edgesplit.data.seeding import epoch_seed
from edgesplit.errors import DataError

PAD = 4  # the seed's RandomCrop(32, padding=4): offsets 0..2*PAD
_MASK32 = 0xFFFFFFFF


def _signed(v: int) -> int:
    """A 64-bit constant as the int64 that holds its bits."""
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps): the same bits on any device."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def draws(seed: int, ids: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(row offset, column offset, flip) of each sample: a hash of (seed, its dataset index) alone,
    so a sample's crop and flip do not depend on the batch, the order or the device."""
    h1 = _mix(ids.to(torch.int64) * _GOLDEN + seed)
    h2 = _mix(h1 ^ _GOLDEN)
    span = 2 * PAD + 1
    return (h1 & _MASK32) % span, _shr(h1, 32) % span, (h2 & 1).bool()


@dataclass
class ResidentImages:
    """A training set as tensors: what `Datasets.resident` returns and data.device keeps on a device.

    images: uint8 [N, H, W, C] (CIFAR's raw arrays; each batch is cropped and flipped when `augment`,
    then scaled to [0, 1] and normalized by `mean`/`std`, as torchvision's ToTensor + Normalize), or
    float [N, C, H, W] used as they are (digits, synthetic: no augmentation)."""
    images: Tensor
    labels: Tensor
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    augment: bool = False

    def __len__(self) -> int:
        return int(self.labels.numel())

    def first(self, n: Optional[int]) -> "ResidentImages":
        """The first n samples (data.train_size; None: all)."""
        if n is None:
            return self
        return replace(self, images=self.images[:n], labels=self.labels[:n])

    def to(self, device: torch.device) -> "ResidentImages":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


class ResidentLoader:
    """Training batches (x, y, dataset indices) of a resident set, like build_loader's: the same
    shuffled order and batches (its sampler, seeded by (seed, epoch)), last partial batch dropped.
    Each batch is gathered, cropped, flipped and normalized where the set lives; a sample's crop
    and flip are `draws` of (seed, epoch) and its index (fixed_augment: of (seed, 0), every
    epoch), not torchvision's draws. x is NCHW, in channels_last layout when `channels_last`; ids
    stay on the CPU. On a GPU each batch is synchronized, so the time spent waiting for it (the
    trainer's data time) includes the device's work."""

    def __init__(self, data: ResidentImages, batch_size: int, *, seed: int, epoch: int,
                 fixed_augment: bool = False, channels_last: bool = False) -> None:
        if len(data) < batch_size:
            raise DataError(f"data.batch_size={batch_size} is larger than the training set "
                            f"({len(data)} samples, see data.train_size): with the last partial "
                            "batch dropped no batch is left")
        self.data, self.dataset, self.batch_size = data, data, batch_size
        self.order_seed = epoch_seed(seed, epoch)
        self.draw_seed = epoch_seed(seed, 0) if fixed_augment else self.order_seed
        self.channels_last = channels_last
        self.device = data.images.device
        self.full = torch.tensor(255.0, device=self.device)  # a tensor: true division on every device
        self.mean = self.std = None
        if data.mean is not None and data.std is not None:
            self.mean = torch.tensor(data.mean, device=self.device).view(1, -1, 1, 1)
            self.std = torch.tensor(data.std, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def batch_ids(self) -> DataLoader:
        """The epoch's batches of sample indices: build_loader's, a DataLoader shuffled by the
        generator of the same (seed, epoch) (which draws its base seed from it first)."""
        return DataLoader(range(len(self.data)), batch_size=self.batch_size, shuffle=True,  # type: ignore
                          drop_last=True, generator=torch.Generator().manual_seed(self.order_seed))

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        for ids in self.batch_ids():
            at = ids.to(self.device)
            x = self.batch(at)
            y = self.data.labels[at]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            yield x, y, ids

    def batch(self, ids: Tensor) -> Tensor:
        """The samples `ids` (on the set's device) as the model's input."""
        images = self.data.images[ids]
        if images.dtype != torch.uint8:
            return images if not self.channels_last else images.contiguous(memory_format=torch.channels_last)
        if self.data.augment:
            images = crop_flip(images, *draws(self.draw_seed, ids))
        x = images.permute(0, 3, 1, 2).float().div(self.full)  # NCHW in the NHWC layout
        if self.mean is not None and self.std is not None:
            x = x.sub(self.mean).div(self.std)
        return x if self.channels_last else x.contiguous()


def crop_flip(images: Tensor, rows: Tensor, cols: Tensor, flip: Tensor) -> Tensor:
    """uint8 [B, H, W, C] padded by PAD zeros, each cut at (rows[i], cols[i]) back to H x W, and
    mirrored left-right where flip[i]: RandomCrop(padding=PAD) and RandomHorizontalFlip."""
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, PAD, PAD, PAD, PAD))
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    r = rows.view(-1, 1) + ar_h  # [B, H]
    c = cols.view(-1, 1) + torch.where(flip.view(-1, 1), w - 1 - ar_w, ar_w)  # [B, W]
    at = torch.arange(b, device=images.device).view(-1, 1, 1)
    return padded[at, r.view(b, h, 1), c.view(b, 1, w)]
