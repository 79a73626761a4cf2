"""torchgpipe's micro-batch machinery as the rest of edgesplit meets it: a boundary that replays its
first pass when a checkpointed partition is recomputed, the recomputation context of the dist
backend's runner, and deferred BatchNorm. The only place besides gpipe.py that imports torchgpipe."""
import contextlib
from typing import ContextManager, Dict, Tuple

from torch import Tensor, nn
from torchgpipe import is_checkpointing, is_recomputing
from torchgpipe.batchnorm import DeferredBatchNorm
from torchgpipe.checkpoint import enable_recomputing

from edgesplit.boundary.boundary import Boundary
from edgesplit.boundary.layer import BoundaryLayer, Crossed

# DeferredBatchNorm's per-batch accumulators, which a plain BatchNorm does not have
_ACCUMULATORS = ("sum", "sum_squares")


class ReplayingBoundaryLayer(BoundaryLayer):
    """A boundary first in a partition that torchgpipe's checkpointing (`except_last`, `always`)
    runs forward a second time during backward. The recomputation gets the first pass's crossing
    back: the same mask and scale (the recomputed tensor need not be bit-identical), no bytes
    counted twice, no codec state updated twice. torchgpipe runs a partition on one thread."""

    def __init__(self, boundary: Boundary) -> None:
        super().__init__(boundary)
        self._first_pass: Dict[int, Crossed] = {}  # by the input's storage
        self._step = boundary.step

    def cross_forward(self, x: Tensor) -> Crossed:
        if is_recomputing():
            return self._first_pass.pop(x.data_ptr())
        if self._step != self.boundary.step:  # a new step: a failed one's leftovers go
            self._first_pass.clear()
            self._step = self.boundary.step
        crossed = super().cross_forward(x)
        if is_checkpointing():
            self._first_pass[x.data_ptr()] = crossed
        return crossed


def recompute_contexts() -> Tuple[ContextManager, ContextManager]:
    """torch.utils.checkpoint's context_fn (first pass, recomputation) that tells torchgpipe's
    DeferredBatchNorm to skip its statistics while a forward is recomputed."""
    return contextlib.nullcontext(), enable_recomputing()


def plain_state_batch_norm(module: nn.Module) -> nn.Module:
    """module with DeferredBatchNorm's accumulators left out of its state_dict: a unit then has
    the same state whichever BatchNorm runs it, so any backend loads what any backend saved."""
    for m in module.modules():
        if isinstance(m, DeferredBatchNorm):
            for name in _ACCUMULATORS:
                value = getattr(m, name)
                delattr(m, name)
                m.register_buffer(name, value, persistent=False)
    return module


def defer_batch_norm(module: nn.Module, chunks: int) -> nn.Module:
    """module's BatchNorms as torchgpipe's DeferredBatchNorm over `chunks` micro-batches (in
    place: the units keep their parameters and buffers)."""
    return plain_state_batch_norm(DeferredBatchNorm.convert_deferred_batch_norm(module, chunks))
