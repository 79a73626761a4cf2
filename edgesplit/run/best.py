"""The best epoch by `checkpoint.monitor` (checkpoint_best.pt keeps it), the run's closing line, and
`init_from`: a new run's weights from a checkpoint (not its optimizer, schedule or epoch)."""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig

from edgesplit.backends import Backend
from edgesplit.errors import UserError
from edgesplit.logs.summary import RunSummary
from edgesplit.options import MonitorTag, options
from edgesplit.run import checkpoint

log = logging.getLogger(__name__)
NAME = "checkpoint_best.pt"  # in the run dir, beside checkpoint.NAME
# each monitored tag's figure in the summary's per-epoch history (a resumed run keeps it)
HISTORY_FIELD = {tag: tag.replace("/", "_") for tag in options(MonitorTag)}


def history(summary: RunSummary, monitor: str) -> List[Tuple[int, float]]:
    """(epoch, value of `monitor`) for each finished epoch that has it."""
    values = [(r.epoch, getattr(r, HISTORY_FIELD[monitor])) for r in summary.history]
    return [(epoch, float(value)) for epoch, value in values if value is not None]


def best_epoch(summary: RunSummary, monitor: str, mode: str) -> Optional[Tuple[int, float]]:
    """The epoch with the best value (the first of equals) and that value; None before any."""
    values = history(summary, monitor)
    if not values:
        return None
    pick = max if mode == "max" else min
    return pick(values, key=lambda item: item[1])


def best_copies(summary: RunSummary, run_dir: Path, cfg: DictConfig) -> List[Path]:
    """[checkpoint_best.pt] where the epoch just recorded is the best so far, else []."""
    best = best_epoch(summary, cfg.checkpoint.monitor, cfg.checkpoint.mode)
    return [run_dir / NAME] if best is not None and best[0] == summary.epochs else []


def end_line(summary: RunSummary, run_dir: Path, cfg: DictConfig) -> str:
    """How the run ended: its status, the best and the final value of the monitored metric with
    their epochs, and where its results are."""
    monitor = cfg.checkpoint.monitor
    best, values = best_epoch(summary, monitor, cfg.checkpoint.mode), history(summary, monitor)
    if best is None:
        figures = f"no {monitor} yet"
    else:
        figures = (f"best {monitor} {best[1]:.4g} at epoch {best[0]} ({NAME}), final {values[-1][1]:.4g} "
                   f"at epoch {values[-1][0]}")
    return (f"{summary.status} after {summary.epochs}/{summary.epochs_planned} epochs: {figures}; "
            f"results in {run_dir}")


@dataclass
class Weights:
    """`init_from`'s checkpoint: its layer units' weights and buffers, and its epoch."""
    path: Path
    units: Dict[int, Any]
    epoch: Any


def read_weights(path: Path) -> Weights:
    """The weights `init_from` names, read before the run builds anything (a bad path stops it at once)."""
    if not path.is_file():
        raise UserError(f"init_from={path}: no such file (a run's {checkpoint.NAME} or {NAME})")
    state = checkpoint.load(path)
    units = state.get("units") if isinstance(state, dict) else None  # a foreign file may hold anything
    if not isinstance(units, dict):
        raise checkpoint.CheckpointError(f"init_from={path}: not an edgesplit checkpoint (no layer units)")
    return Weights(path, units, state.get("epoch"))


def load_weights(backend: Backend, weights: Weights) -> None:
    """`init_from`: the weights into a new run's backend; its own optimizer, schedule, codec state
    and epoch stay fresh."""
    try:
        backend.load_state_dict({**backend.state_dict(), "units": weights.units})
    except RuntimeError as e:  # torch's shape mismatch
        reason = " ".join(str(e).split())[:300]
        raise checkpoint.CheckpointError(f"init_from={weights.path} does not fit the model: {reason}") \
            from None
    log.info(f"init_from={weights.path}: the weights of its epoch {weights.epoch}; optimizer, schedule "
             f"and epoch start fresh")
