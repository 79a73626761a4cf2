"""Compute time per side: identity stamps at a partition's entry and exit, timed forward and backward."""
import threading
import time
from collections import defaultdict
from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn


class SideClock:
    """Seconds spent inside each side's partitions (host time; CUDA work is asynchronous)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Dict[Tuple[str, int], float] = {}
        self.seconds: Dict[str, float] = defaultdict(float)

    def start(self, side: str) -> None:
        self._open[side, threading.get_ident()] = time.perf_counter()

    def stop(self, side: str) -> None:
        began = self._open.pop((side, threading.get_ident()), None)
        if began is not None:
            with self._lock:
                self.seconds[side] += time.perf_counter() - began

    def reset(self) -> None:
        with self._lock:
            self.seconds = defaultdict(float)


class _StampFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, stamp: "Stamp") -> Tensor:
        ctx.stamp = stamp
        (stamp.clock.start if stamp.entry else stamp.clock.stop)(stamp.side)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        stamp = ctx.stamp
        # backward walks the partition from its exit to its entry
        (stamp.clock.stop if stamp.entry else stamp.clock.start)(stamp.side)
        return grad, None


class Stamp(nn.Module):
    """Marks the entry or the exit of one side's partition."""

    def __init__(self, clock: SideClock, side: str, entry: bool) -> None:
        super().__init__()
        self.clock, self.side, self.entry = clock, side, entry

    def forward(self, x: Tensor) -> Tensor:
        return _StampFn.apply(x, self)
