"""Checkpoints keyed by layer unit and parameter name, so any backend loads what any backend wrote.

A checkpoint is one dict (one file, loaded with `weights_only=True`):
  units         {unit index: state_dict}                 every unit of the model
  optimizer     {'units.<i>.<name>': optimizer state}    every parameter, whichever side holds it
  lr_scheduler  {process: scheduler state}               'edge', 'cloud_stage1', ...
  rng           {process: {'cpu': ..., 'cuda': [...]}}   what a dist cloud stage draws dropout from
                                                         (the trainer reseeds its own every epoch)
  boundaries    {process: {boundary: codec state}}
  grad_scaler   {process: GradScaler state}                precision=fp16 ({} otherwise)
plus what the trainer adds (format: FORMAT, epoch, summary, config, and step_times: {'edge': the
run's step-time histogram, edgesplit.run.steptimes}). Each process of a run contributes a `part`
with the same keys; a process that has no slot of its own in a checkpoint (written with another
topology) takes the edge's.
"""
import io
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Sequence, Tuple

import torch
from torch import nn

from edgesplit.boundary.boundary import Boundary
from edgesplit.errors import UserError
from edgesplit.logs.summary import RunSummary, SummaryFormatError
from edgesplit.run.lr_schedule import Optimization
from edgesplit.run.rundir import atomic_write

PER_PROCESS = ("lr_scheduler", "rng", "boundaries", "grad_scaler")
NAME = "checkpoint.pt"  # in the run dir
EDGE_PROCESS = "edge"  # the edge process's slot; cloud stages are "cloud_stage1", ...
FORMAT = 1  # the layout's version, the `format` key (absent in the first checkpoints: the same layout)
# The type of each key a checkpoint holds; the keys any reader needs (resuming also reads `summary`).
KINDS: Dict[str, Tuple[type, ...]] = {"epoch": (int,), "format": (int,), **{k: (dict,) for k in (
    "units", "optimizer", "summary", "config", "step_times", *PER_PROCESS)}}
REQUIRED = ("epoch", "units", "optimizer")


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


def load(path: Path, required: Sequence[str] = REQUIRED) -> Dict[str, Any]:
    """A checkpoint file, data only (no code runs from it), checked as a whole (check_layout)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise CheckpointError(f"cannot read the checkpoint {path}: {reason}") from None
    check_layout(state, path, required)
    return state


def _kind(value: Any) -> str:
    return type(value).__name__


def check_layout(state: Any, path: Path, required: Sequence[str] = REQUIRED) -> None:
    """A loaded file as an edgesplit checkpoint before anything is restored from it: a dict of
    format FORMAT, with the `required` keys, each key of its type, unit states of named tensors,
    optimizer states by parameter and a run summary (where there is one); CheckpointError naming
    the file and the first thing wrong."""
    def wrong(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not an edgesplit checkpoint: {what}")
    if not isinstance(state, dict):
        raise wrong(f"it holds a {_kind(state)}, not a dict")
    for key, kinds in KINDS.items():
        if key not in state:
            if key in required:
                raise wrong(f"it has no `{key}` (its keys: {', '.join(map(str, state)) or 'none'})")
        elif not isinstance(state[key], kinds) or isinstance(state[key], bool):
            raise wrong(f"its `{key}` is a {_kind(state[key])}, not {' or '.join(k.__name__ for k in kinds)}")
    if state.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"{path} is checkpoint format {state['format']}; this edgesplit reads "
                              f"format {FORMAT}")
    if state["epoch"] < 0:
        raise wrong(f"its `epoch` is {state['epoch']}, not >= 0")
    for i, unit in state["units"].items():
        if not isinstance(i, int) or not isinstance(unit, dict):
            raise wrong(f"its `units` holds {i!r}: a {_kind(unit)}, not a unit index and its state dict")
        for name, tensor in unit.items():
            if not torch.is_tensor(tensor):
                raise wrong(f"unit {i} `{name}` is a {_kind(tensor)}, not a tensor")
    for name, values in state["optimizer"].items():
        if not isinstance(values, dict):
            raise wrong(f"its `optimizer` state of {name!r} is a {_kind(values)}, not a dict")
    try:
        if "summary" in state:
            RunSummary.from_dict(state["summary"])
    except SummaryFormatError as e:
        raise wrong(f"its `summary` is no run summary: {e}") from None
