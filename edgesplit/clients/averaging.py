"""FedAvg of the same parts held by several clients: the weighted mean of their floating-point
state (parameters, BatchNorm statistics), given back to every holder; no process, no link."""
from typing import Dict, List, Sequence

import torch
from torch import nn


def state_bytes(modules: Sequence[nn.Module]) -> int:
    """Bytes of the floating-point state of `modules`: what a client sends to be averaged."""
    return sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values()
               if t.is_floating_point())


@torch.no_grad()
def average_into(holders: Sequence[Sequence[nn.Module]], weights: Sequence[float],
                 receivers: Sequence[Sequence[nn.Module]]) -> None:
    """FedAvg: the mean of the holders' floating-point state, weighted by `weights` (samples; the
    zero-weight ones left out), copied into every receiver's modules (the same layout); integer
    state (BatchNorm's batch count) becomes the holders' largest, so every copy ends equal."""
    kept = [(h, w) for h, w in zip(holders, weights) if w > 0]
    if not kept:
        return
    total = float(sum(w for _, w in kept))
    states = [[m.state_dict() for m in h] for h, _ in kept]
    mean: List[Dict[str, torch.Tensor]] = []
    for i, first in enumerate(states[0]):
        part: Dict[str, torch.Tensor] = {}
        for name, value in first.items():
            values = [s[i][name] for s in states]
            if value.is_floating_point():
                part[name] = sum((v.double() * (w / total) for v, (_, w) in zip(values, kept)),
                                 torch.zeros_like(value, dtype=torch.float64)).to(value.dtype)
            else:
                part[name] = torch.stack(values).amax(dim=0)
        mean.append(part)
    for modules in receivers:
        for module, part in zip(modules, mean):
            for name, target in module.state_dict().items():
                target.copy_(part[name])
