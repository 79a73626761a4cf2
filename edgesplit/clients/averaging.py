"""FedAvg of the same parts held by several clients: the weighted mean of their floating-point
state (parameters, BatchNorm statistics), given back to every holder (dist: of the states the edges
sent, edgesplit.clients.dist)."""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn


def state_bytes(modules: Sequence[nn.Module]) -> int:
    """Bytes of the floating-point state of `modules`: what a client sends to be averaged."""
    return sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values()
               if t.is_floating_point())


@torch.no_grad()
def mean_state(states: Sequence[Sequence[Dict[str, torch.Tensor]]],
               weights: Sequence[float]) -> Optional[List[Dict[str, torch.Tensor]]]:
    """FedAvg of several holders' state dicts (each a list, one per module, the same layout): the
    floating-point entries' mean weighted by `weights` (samples; the zero-weight ones left out),
    integer entries (BatchNorm's batch count) the holders' largest; None when no weight is > 0."""
    kept = [(s, w) for s, w in zip(states, weights) if w > 0]
    if not kept:
        return None
    total = float(sum(w for _, w in kept))
    mean: List[Dict[str, torch.Tensor]] = []
    for i, first in enumerate(kept[0][0]):
        part: Dict[str, torch.Tensor] = {}
        for name, value in first.items():
            values = [s[i][name] for s, _ in kept]
            if value.is_floating_point():
                part[name] = sum((v.double() * (w / total) for v, (_, w) in zip(values, kept)),
                                 torch.zeros_like(value, dtype=torch.float64)).to(value.dtype)
            else:
                part[name] = torch.stack(values).amax(dim=0)
        mean.append(part)
    return mean


@torch.no_grad()
def average_into(holders: Sequence[Sequence[nn.Module]], weights: Sequence[float],
                 receivers: Sequence[Sequence[nn.Module]]) -> None:
    """FedAvg (mean_state) of the holders' modules, copied into every receiver's modules (the same
    layout), so every copy ends equal."""
    mean = mean_state([[m.state_dict() for m in h] for h in holders], weights)
    if mean is None:
        return
    for modules in receivers:
        for module, part in zip(modules, mean):
            for name, target in module.state_dict().items():
                target.copy_(part[name])
