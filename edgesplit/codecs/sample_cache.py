"""Per-sample codec state (delta references, error-feedback residuals): rows keyed by dataset index."""
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from edgesplit.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class CacheSpec:
    """How a per-sample codec keeps its rows: how many (the training set's size), in which dtype,
    in RAM (folder None) or in an on-disk memmap under `folder`."""
    num_samples: int
    dtype: str = "float16"
    folder: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"compressor.num_samples must be a positive int (the training set's "
                             f"size), got {self.num_samples!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"compressor.cache_dtype must be one of {', '.join(DTYPES)}, "
                             f"got {self.dtype!r}")


def human(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000  # type: ignore[assignment]
    raise AssertionError


class SampleCache:
    """One row per training sample, allocated at the first put (when the row shape is known),
    and a `seen` flag per row. Rows are read as fp32 on the caller's device."""

    def __init__(self, spec: CacheSpec, name: str) -> None:
        self.spec, self.name = spec, name
        self.rows: Optional[Tensor] = None
        self.seen = torch.zeros(spec.num_samples, dtype=torch.bool)
        self._file: Optional[str] = None

    @property
    def nbytes(self) -> int:
        return 0 if self.rows is None else self.rows.numel() * self.rows.element_size()

    def _allocate(self, shape: Tuple[int, ...]) -> Tensor:
        dtype = DTYPES[self.spec.dtype]
        numel = self.spec.num_samples
        for d in shape:
            numel *= d
        if self.spec.folder is None:
            rows = torch.zeros((self.spec.num_samples, *shape), dtype=dtype)
            where = "in RAM"
        else:
            os.makedirs(self.spec.folder, exist_ok=True)
            self._file = os.path.join(self.spec.folder, f"{self.name}.{os.getpid()}.bin")
            # a fresh sparse file reads as zeros; shared=True writes go to the file
            with open(self._file, "wb") as f:
                f.truncate(numel * torch.empty((), dtype=dtype).element_size())
            rows = torch.from_file(self._file, shared=True, size=numel, dtype=dtype)
            rows = rows.view(self.spec.num_samples, *shape)
            where = f"memmapped at {self._file}"
        log.info(f"{self.name}: per-sample cache of {self.spec.num_samples} x {tuple(shape)} "
                 f"{self.spec.dtype} = {human(rows.numel() * rows.element_size())} {where}")
        return rows

    def check_ids(self, ids: Tensor) -> Tensor:
        """ids as int64 on the CPU, or a one-line ValueError when one is out of range."""
        ids = ids.to("cpu", torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.spec.num_samples):
            raise ValueError(f"{self.name}: sample index out of range 0..{self.spec.num_samples - 1} "
                             f"(compressor.num_samples is the training set's size)")
        return ids

    def get(self, ids: Tensor, device: torch.device) -> Tensor:
        """The rows of `ids` as fp32 on `device` (zeros before the first put)."""
        assert self.rows is not None, "get before the first put"
        return self.rows[ids].to(device=device, dtype=torch.float32)

    def shape_ok(self, shape: Tuple[int, ...]) -> bool:
        return self.rows is None or tuple(self.rows.shape[1:]) == tuple(shape)

    def put(self, ids: Tensor, values: Tensor) -> None:
        """rows[ids] = values (cast to the cache dtype); marks them seen."""
        if self.rows is None:
            self.rows = self._allocate(tuple(values.shape[1:]))
        if not self.shape_ok(tuple(values.shape[1:])):
            raise ValueError(f"{self.name}: rows of shape {tuple(values.shape[1:])}, the cache "
                             f"holds {tuple(self.rows.shape[1:])}")
        self.rows[ids] = values.detach().to("cpu", self.rows.dtype)
        self.seen[ids] = True

    def ensure(self, shape: Tuple[int, ...]) -> None:
        """Allocate for rows of `shape` now (a receiver that reads before its first put)."""
        if self.rows is None:
            self.rows = self._allocate(shape)

    def state_dict(self) -> Dict[str, Any]:
        # saved right away by the caller (torch.save): no copy of the rows is needed
        return {"seen": self.seen.clone(), "rows": self.rows}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        seen, rows = state.get("seen"), state.get("rows")
        if seen is None:
            return
        if seen.shape != self.seen.shape:
            raise ConfigError(f"{self.name}: the checkpoint's cache has {seen.numel()} rows, this "
                              f"run's training set {self.seen.numel()}: data.train_size differs from the "
                              f"checkpoint's (resume with its value, or start afresh)")
        self.seen.copy_(seen)
        if rows is not None:
            self.ensure(tuple(rows.shape[1:]))
            assert self.rows is not None
            self.rows.copy_(rows)
