"""A partition run micro-batch by micro-batch as torchgpipe does: checkpointing, deferred BN."""
import contextlib
from typing import ContextManager, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchgpipe.batchnorm import DeferredBatchNorm
from torchgpipe.checkpoint import enable_recomputing

from edgesplit.options import CheckpointMode


def _recompute_context() -> Tuple[ContextManager, ContextManager]:
    # torchgpipe's DeferredBatchNorm skips statistics while torchgpipe.is_recomputing() is true
    return contextlib.nullcontext(), enable_recomputing()


class StageRunner:
    """Forward of one micro-batch through `module`. Like torchgpipe's GPipe in training mode, the
    first `checkpoint_stop` micro-batches keep only their input and recompute the forward during
    backward ('always': all, 'except_last': all but the last, 'never': none)."""

    def __init__(self, module: nn.Module, checkpoint_mode: CheckpointMode = "except_last",
                 chunks: int = 1, deferred_batch_norm: bool = False) -> None:
        if deferred_batch_norm:  # in place: the units keep their parameters and buffers
            module = DeferredBatchNorm.convert_deferred_batch_norm(module, chunks)
        self.module = module
        self.checkpoint_mode = checkpoint_mode
        self.chunks = chunks

    def checkpointed(self, index: int) -> bool:
        """As torchgpipe: counted against the configured chunks, not the micro-batches made."""
        if not (self.module.training and torch.is_grad_enabled()):
            return False
        stop = {"always": self.chunks, "except_last": self.chunks - 1,
                "never": 0}[self.checkpoint_mode]
        return index < stop

    def __call__(self, x: Tensor, index: int) -> Tensor:
        if self.checkpointed(index):
            return checkpoint(self.module, x, use_reentrant=False, preserve_rng_state=True,
                              context_fn=_recompute_context)
        return self.module(x)
