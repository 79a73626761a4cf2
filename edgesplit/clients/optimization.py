"""A client's optimizer: its own edge parts' and the cloud copy it trains against, stepped as one."""
from typing import Any, Dict, Iterable, Mapping, Optional

import torch

from edgesplit.run.lr_schedule import Optimization


class JointOptimization(Optimization):
    """What a client's pipeline steps: `own` (this client's edge parts: its momentum stays its own)
    and `cloud` (the cloud copy it trains against: shared by every client under sequential and
    sflv2, its own under sflv1). The schedule is the same function of the epoch for both; one
    step, zero_grad and checkpoint for the pair, keyed by parameter name as for one optimizer."""

    def __init__(self, own: Optimization, cloud: Optimization) -> None:
        # no super().__init__: the pair builds no optimizer of its own
        self.own, self.cloud = own, cloud
        self.named = {**own.named, **cloud.named}
        self.optimizer, self.scheduler, self.scaling = own.optimizer, own.scheduler, own.scaling

    @property
    def epoch(self) -> int:  # type: ignore[override]
        return self.own.epoch

    def zero_grad(self) -> None:
        self.own.zero_grad()
        self.cloud.zero_grad()

    def overflow(self, flags: Iterable[torch.Tensor] = ()) -> bool:
        return self.scaling.overflow(self.named.values(), flags)

    def step(self, overflow: bool = False) -> bool:
        stepped = self.own.step(overflow)
        self.cloud.step(overflow)
        return stepped

    def start_epoch(self, epoch: int) -> None:
        self.own.start_epoch(epoch)
        self.cloud.start_epoch(epoch)  # again for a shared cloud: a no-op once at the epoch

    def state_dict(self) -> Dict[str, Any]:
        own, cloud = self.own.state_dict(), self.cloud.state_dict()
        return {"optimizer": {**own["optimizer"], **cloud["optimizer"]}, "lr_scheduler": own["lr_scheduler"]}

    def load_state_dict(self, params: Mapping[str, Any], scheduler: Optional[Mapping[str, Any]]) -> None:
        self.own.load_state_dict(params, scheduler)
        self.cloud.load_state_dict(params, scheduler)
