"""Checkpoints keyed by layer unit, written atomically, so any backend loads what any backend wrote."""
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch
from torch import nn
from torchgpipe.batchnorm import DeferredBatchNorm

# DeferredBatchNorm's per-batch accumulators: transient, and absent from a plain BatchNorm.
_TRANSIENT = ("sum", "sum_squares")


def unit_state(unit: nn.Module) -> Dict[str, torch.Tensor]:
    """A unit's state_dict on the CPU, the same whichever backend (and BatchNorm flavour) holds it."""
    skip = {f"{name}.{b}" if name else b
            for name, m in unit.named_modules() if isinstance(m, DeferredBatchNorm) for b in _TRANSIENT}
    return {k: v.detach().cpu().clone() for k, v in unit.state_dict().items() if k not in skip}


def load_unit(unit: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    missing, unexpected = unit.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[-1] not in _TRANSIENT]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")


def optimizer_state(optimizer: torch.optim.Optimizer, named: Mapping[str, nn.Parameter]) -> Dict[str, Any]:
    """Per-parameter optimizer state by parameter name (`units.<i>.<name>`), on the CPU."""
    out = {}
    for name, p in named.items():
        if p in optimizer.state:
            out[name] = {k: v.detach().cpu().clone() if torch.is_tensor(v) else v
                         for k, v in optimizer.state[p].items()}
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, named: Mapping[str, nn.Parameter],
                         state: Mapping[str, Any]) -> None:
    for name, p in named.items():
        if name in state:
            optimizer.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v
                                  for k, v in state[name].items()}


def atomic_save(obj: Any, path: Path) -> None:
    """Write then rename: a crash mid-write leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save(path: Path, units: Mapping[int, nn.Module], optimizer: torch.optim.Optimizer,
         named: Mapping[str, nn.Parameter], parts: List[str], **extra: Any) -> None:
    """`parts` name files beside `path` holding the units of other processes (dist's cloud ranks)."""
    state = {
        "units": {i: unit_state(u) for i, u in units.items()},
        "optimizer": optimizer_state(optimizer, named),
        "parts": list(parts),
        **extra,
    }
    atomic_save(state, path)


def load(path: Path) -> Dict[str, Any]:
    """The checkpoint with the units and optimizer state of its parts merged in."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    for part in state.get("parts", []):
        extra = torch.load(path.parent / part, map_location="cpu", weights_only=False)
        state["units"].update(extra["units"])
        state["optimizer"].update(extra["optimizer"])
    return state


def restore(state: Mapping[str, Any], units: Mapping[int, nn.Module], optimizer: torch.optim.Optimizer,
            named: Mapping[str, nn.Parameter]) -> None:
    for i, unit in units.items():
        if i not in state["units"]:
            raise RuntimeError(f"checkpoint holds no state for layer unit {i}")
        load_unit(unit, state["units"][i])
    load_optimizer_state(optimizer, named, state["optimizer"])
