"""Mixed precision and memory format on every side: autocast inside each partition, fp16 loss scaling."""
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import Tensor, nn

from edgesplit.errors import ConfigError
from edgesplit.options import DEFAULT_LOSS_SCALE, PrecisionName

# precision -> autocast dtype (None: no autocast)
AUTOCAST_DTYPES: Dict[PrecisionName, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16,
                                                               "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', ...: how summary.json names a dtype."""
    return str(dtype).replace("torch.", "")


class Autocast(nn.Module):
    """Runs `inner` under torch.autocast, entered in this forward itself, on whichever thread calls
    it. Autocast is thread-local and torchgpipe runs each partition, and its checkpoint
    recomputation, on worker threads: an autocast entered around the pipeline would not reach them,
    and a module placed at a partition's entry would leave its context when its own forward returns."""

    def __init__(self, inner: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.device_type, self.dtype = inner, device_type, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.inner(x)

    def extra_repr(self) -> str:
        return f"{self.device_type}, {dtype_name(self.dtype)}"


class LossScaling:
    """fp16's loss scaling of one process's optimizer (torch.amp.GradScaler); with `enabled` off
    (fp32, bf16) every step is taken.

    The processes of a run make one decision per step, skip or step, so that their scales stay
    equal: `step(optimizer, overflow)` carries out the run's decision, which the backend agrees
    from `overflow()` of every process (its gradients and its boundaries' flags). A skipped step
    leaves the weights and the optimizer state as they were and halves the scale."""

    def __init__(self, enabled: bool, init_scale: float, device: torch.device) -> None:
        self.enabled = enabled
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale, enabled=enabled)
        self.skipped = 0  # steps skipped since reset_counts()
        if enabled:
            # a process without a loss (a cloud stage) unscales too: the scale lives on its device
            self.scaler.scale(torch.zeros((), device=device))

    def scale(self, loss: Tensor) -> Tensor:
        """The loss to backpropagate (multiplied by the scale under fp16)."""
        return self.scaler.scale(loss) if self.enabled else loss

    @property
    def value(self) -> float:
        """The current scale (1.0 when disabled)."""
        return float(self.scaler.get_scale()) if self.enabled else 1.0

    def overflow(self, params: Iterable[nn.Parameter], flags: Iterable[Tensor] = ()) -> bool:
        """Whether a gradient of `params` or one of `flags` (a boundary's non-finite gradient) is
        set: one host synchronisation per step, none when disabled."""
        if not self.enabled:
            return False
        checks: List[Tensor] = [~torch.isfinite(p.grad).all() for p in params if p.grad is not None]
        checks += list(flags)
        if not checks:
            return False
        device = checks[0].device
        return bool(torch.stack([c.to(device) for c in checks]).any())

    def step(self, optimizer: torch.optim.Optimizer, overflow: bool) -> bool:
        """Step the optimizer unless `overflow` (the run's decision); True if it stepped."""
        if not self.enabled:
            optimizer.step()
            return True
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return not overflow
        if overflow:
            # the decision may come from another process or a boundary: the scaler sees it as
            # an inf gradient here, skips the step and backs off, as every other process does
            grads[0].fill_(float("inf"))
            self.skipped += 1
        self.scaler.step(optimizer)
        self.scaler.update()
        return not overflow

    def state_dict(self) -> Dict[str, Any]:
        return self.scaler.state_dict() if self.enabled else {}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if self.enabled and state:
            self.scaler.load_state_dict(state)


@dataclass(frozen=True)
class Precision:
    """The run's `precision`, `channels_last` and `loss_scale`, as every backend applies them."""
    name: PrecisionName = "fp32"
    channels_last: bool = False
    loss_scale: float = DEFAULT_LOSS_SCALE

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype (None for fp32)."""
        return AUTOCAST_DTYPES[self.name]

    @property
    def scaled(self) -> bool:
        """fp16: the loss is scaled and non-finite gradients skip the step."""
        return self.name == "fp16"

    def partition(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` (already on `device`) in the memory format, its forward under autocast."""
        if self.dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision=bf16: the GPU {device} has no bfloat16 support (it needs "
                              f"compute capability 8.0 or newer): allowed here: fp32, fp16")
        if self.channels_last:
            module.to(memory_format=torch.channels_last)  # 4-D weights; in place
        return module if self.dtype is None else Autocast(module, device.type, self.dtype)

    def input(self, x: Tensor) -> Tensor:
        """A batch (or micro-batch) in the memory format: channels_last for 4-D images."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def scaling(self, device: torch.device) -> LossScaling:
        return LossScaling(self.scaled, self.loss_scale, device)
