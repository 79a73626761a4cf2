"""A partition run micro-batch by micro-batch as torchgpipe does: recomputation, deferred BN."""
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recomputed_forward

from edgesplit.backends.gpipe_recompute import defer_batch_norm, recompute_contexts
from edgesplit.options import CheckpointMode


class StageRunner:
    """Forward of one micro-batch through `module`. Like torchgpipe's GPipe in training mode, the
    first micro-batches keep only their input and recompute the forward during backward, as
    `recompute_mode` (pipeline_backend.checkpoint) says: 'always': all, 'except_last': all but
    the last, 'never': none."""

    def __init__(self, module: nn.Module, recompute_mode: CheckpointMode = "except_last",
                 chunks: int = 1, deferred_batch_norm: bool = False) -> None:
        self.module = defer_batch_norm(module, chunks) if deferred_batch_norm else module
        self.recompute_mode = recompute_mode
        self.chunks = chunks

    def recomputes(self, index: int) -> bool:
        """As torchgpipe: counted against the configured chunks, not the micro-batches made."""
        if not (self.module.training and torch.is_grad_enabled()):
            return False
        stop = {"always": self.chunks, "except_last": self.chunks - 1,
                "never": 0}[self.recompute_mode]
        return index < stop

    def __call__(self, x: Tensor, index: int) -> Tensor:
        if self.recomputes(index):
            return recomputed_forward(self.module, x, use_reentrant=False, preserve_rng_state=True,
                                      context_fn=recompute_contexts)
        return self.module(x)
