"""Checkpoints keyed by layer unit and parameter name, so any backend loads what any backend wrote.

A checkpoint is one dict (one file, loaded with `weights_only=True`):
  units         {unit index: state_dict}                 every unit of the model
  optimizer     {'units.<i>.<name>': optimizer state}    every parameter, whichever side holds it
  lr_scheduler  {process: scheduler state}               'edge', 'cloud_stage1', ...
  rng           {process: {'cpu': ..., 'cuda': [...]}}   what a dist cloud stage draws dropout from
                                                         (the trainer reseeds its own every epoch)
  boundaries    {process: {boundary: codec state}}
  grad_scaler   {process: GradScaler state}                precision=fp16 ({} otherwise)
plus what the trainer adds (epoch, summary, config, and step_times: {'edge': the run's step-time
histogram, edgesplit.run.steptimes}). Each process of a run contributes a `part`
with the same keys; a process that has no slot of its own in a checkpoint (written with another
topology) takes the edge's.
"""
import io
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping

import torch
from torch import nn

from edgesplit.boundary.boundary import Boundary
from edgesplit.errors import UserError
from edgesplit.run.lr_schedule import Optimization
from edgesplit.run.rundir import atomic_write

PER_PROCESS = ("lr_scheduler", "rng", "boundaries", "grad_scaler")
NAME = "checkpoint.pt"  # in the run dir
EDGE_PROCESS = "edge"  # the edge process's slot; cloud stages are "cloud_stage1", ...


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model."""


def unit_state(unit: nn.Module) -> Dict[str, torch.Tensor]:
    """A unit's state_dict on the CPU, the same whichever backend holds it (gpipe's deferred
    BatchNorm keeps its accumulators out of it: backends.gpipe_recompute)."""
    return {k: v.detach().cpu().clone() for k, v in unit.state_dict().items()}


def load_unit(unit: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    missing, unexpected = unit.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint does not fit the model: missing {missing}, "
                              f"unexpected {unexpected}")


def rng_state() -> Dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def part(process: str, units: Mapping[int, nn.Module], optimization: Optimization,
         boundaries: Iterable[Boundary]) -> Dict[str, Any]:
    """What one process contributes to a checkpoint."""
    opt = optimization.state_dict()
    return {
        "units": {i: unit_state(u) for i, u in units.items()},
        "optimizer": opt["optimizer"],
        "lr_scheduler": {process: opt["lr_scheduler"]},
        "rng": {process: rng_state()},
        "boundaries": {process: {b.name: b.state_dict() for b in boundaries}},
        "grad_scaler": {process: optimization.scaling.state_dict()},
    }


def merge(parts: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
    """One checkpoint dict from the parts of every process."""
    out: Dict[str, Any] = {"units": {}, "optimizer": {}, "lr_scheduler": {}, "rng": {},
                           "boundaries": {}, "grad_scaler": {}}
    for p in parts:
        for key in ("units", "optimizer", *PER_PROCESS):
            out[key].update(p.get(key) or {})
    return out


def _own(state: Mapping[str, Any], key: str, process: str) -> Any:
    slots = state.get(key) or {}
    return slots.get(process, slots.get(EDGE_PROCESS))


def load_part(state: Mapping[str, Any], process: str, units: Mapping[int, nn.Module],
              optimization: Optimization, boundaries: Iterable[Boundary]) -> None:
    """Load one process's units, optimizer, schedule, RNG and codec state from a checkpoint."""
    for i, unit in units.items():
        if i not in state["units"]:
            raise CheckpointError(f"the checkpoint holds no state for layer unit {i}: it was "
                                  f"written for another model")
        load_unit(unit, state["units"][i])
    optimization.load_state_dict(state["optimizer"], _own(state, "lr_scheduler", process))
    rng = _own(state, "rng", process)
    if rng is not None:
        set_rng_state(rng)
    optimization.scaling.load_state_dict(_own(state, "grad_scaler", process))
    codec_states = _own(state, "boundaries", process) or {}
    for b in boundaries:
        b.load_state_dict(codec_states.get(b.name, {}))


def atomic_save(obj: Any, path: Path, *copies: Path) -> None:
    """Write then rename: a crash mid-write leaves the previous file intact. Serialised in memory
    first, so a full disk is Python's OSError(ENOSPC), not torch's bare `iostream error`. `copies`
    (checkpoint_best.pt) get the same bytes first: `path` never names an epoch a copy lacks."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    for target in (*copies, path):
        atomic_write(target, buffer.getvalue())


def load(path: Path) -> Dict[str, Any]:
    """A checkpoint file, data only (no code runs from it)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"cannot read the checkpoint {path}: {reason}") from None
