"""The optimizer (`optimizer._target_`, the seed's SGD by default) and the seed's per-epoch LR
schedule of one side's parameters, the same on every side."""
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, CosineAnnealingLR, LinearLR, LRScheduler

from edgesplit.config import instantiate_target
from edgesplit.errors import ConfigError
from edgesplit.run.precision import LossScaling


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer and its schedule, data only (a cloud stage gets it as JSON): `target` is the
    resolved `optimizer` config (a torch.optim class as `_target_`, `_partial_`, lr and the other
    keys), `epochs` and `warmup_epochs` the schedule's. Calling it makes one process's Optimization."""
    target: Dict[str, Any]
    epochs: int
    warmup_epochs: int

    def __call__(self, named: Mapping[str, nn.Parameter],
                 scaling: Optional[LossScaling] = None) -> "Optimization":
        return Optimization(named, self, scaling)


def build_optimizer(params: Any, spec: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer `spec`'s class (`_target_`, `_partial_`) over params."""
    optimizer = instantiate_target(spec, "optimizer._target_")(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer._target_={spec['_target_']!r} must build a torch.optim.Optimizer, "
                          f"got {type(optimizer).__name__}")
    return optimizer


def build_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int) -> LRScheduler:
    """lr(e) = lr * (1 + cos(pi e / epochs)) / 2 * min(1, (e + 1) / warmup); stepped once per epoch."""
    schedulers: list = []
    if warmup_epochs > 1:
        schedulers.append(LinearLR(optimizer, start_factor=1 / warmup_epochs, end_factor=1.0,
                                   total_iters=warmup_epochs - 1))
    schedulers.append(CosineAnnealingLR(optimizer, T_max=epochs))
    return ChainedScheduler(schedulers, optimizer=optimizer)


class Optimization:
    """The configured optimizer (`optimizer._target_`: SGD, AdamW, ...) over named parameters
    (`units.<i>.<name>`) and its LR schedule, followed by epoch.

    Every process of a run (the trainer's backend, each cloud stage) holds one; `start_epoch`
    steps the schedule to the epoch, so a resumed run's rates equal an uninterrupted run's.
    `scaling` is fp16's loss scaler of this process (disabled: every step is taken)."""

    def __init__(self, named: Mapping[str, nn.Parameter], spec: OptimizerSpec,
                 scaling: Optional[LossScaling] = None) -> None:
        self.named = dict(named)
        self.optimizer = build_optimizer(list(self.named.values()), spec.target)
        self.scheduler = build_scheduler(self.optimizer, spec.epochs, spec.warmup_epochs)
        self.scaling = scaling or LossScaling(False, 1.0, torch.device("cpu"))
        self.epoch = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def overflow(self, flags: Iterable[torch.Tensor] = ()) -> bool:
        """fp16: whether a gradient of this process, or a flag of its boundaries, is not finite."""
        return self.scaling.overflow(self.named.values(), flags)

    def step(self, overflow: bool = False) -> bool:
        """The optimizer step, skipped where the run's scaler decision says `overflow`."""
        return self.scaling.step(self.optimizer, overflow)

    def start_epoch(self, epoch: int) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(epoch - self.epoch):
                self.scheduler.step()
        self.epoch = max(self.epoch, epoch)

    def state_dict(self) -> Dict[str, Any]:
        """Per-parameter state by parameter name (any backend's split loads it), on the CPU."""
        params: Dict[str, Any] = {}
        for name, p in self.named.items():
            if p in self.optimizer.state:
                params[name] = {k: v.detach().cpu().clone() if torch.is_tensor(v) else v
                                for k, v in self.optimizer.state[p].items()}
        # the schedule is a function of the config and the epoch: its state is where it is
        return {"optimizer": params,
                "lr_scheduler": {"epoch": self.epoch, "last_lr": self.scheduler.get_last_lr()}}

    def load_state_dict(self, params: Mapping[str, Any], scheduler: Optional[Mapping[str, Any]]) -> None:
        """Load the state of this side's parameters from `params` (which may hold other sides'),
        and replay the schedule to its epoch (from this run's config, so a schedule changed on
        purpose at resume takes effect). A parameter without state there gets none (a step since
        would otherwise leave its momentum behind)."""
        for name, p in self.named.items():
            self.optimizer.state.pop(p, None)
            if name in params:
                # copies: the optimizer updates its state in place, the caller's dict stays as it was
                self.optimizer.state[p] = {k: v.to(p.device, copy=True) if torch.is_tensor(v) else v
                                           for k, v in params[name].items()}
        if scheduler is not None:
            self.start_epoch(int(scheduler["epoch"]))
