"""Resume: the checkpoint to continue from, and its config checked against the run's."""
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from edgesplit.run import checkpoint
from edgesplit.validate import resume_mode
from edgesplit.errors import ConfigError
from edgesplit.options import DEFAULT_LOSS_SCALE

log = logging.getLogger(__name__)

# The keys that may differ on resume, with everything under them: they do not change the numbers
# (where and how fast it runs, what is logged). The rest does, chunks and deferred_batch_norm of
# the backend included (micro-batches change BatchNorm and the codecs' statistics).
RESULT_NEUTRAL = (
    "resume", "threads", "log_every", "hparam_keys", "data.root", "data.num_workers", "data.download",
    "partition.cloud_stages", "pipeline_backend._target_", "pipeline_backend.name",
    "pipeline_backend.devices", "pipeline_backend.checkpoint", "pipeline_backend.order",
    "pipeline_backend.link", "pipeline_backend.master_addr", "pipeline_backend.master_port",
    "pipeline_backend.role", "pipeline_backend.secret", "pipeline_backend.secret_file",
    "pipeline_backend.timeout_s", "pipeline_backend.edge_slowdown", "logger",
    "pipeline_backend.edges", "pipeline_backend.client",  # = clients.count; which host serves which client
    "checkpoint", "init_from",  # which epoch checkpoint_best.pt keeps; a resumed run has its weights
    "channels_last",  # the memory format: float sums in another order, as `threads`
)
# Keys added after checkpoints were written without them: absent there means this default.
ADDED_DEFAULTS = {"precision": "fp32", "loss_scale": DEFAULT_LOSS_SCALE, "data.device": "cpu"}
_ABSENT = "<absent>"
# The config keys that decide the units' tensor shapes: a checkpoint that does not fit names them.
SHAPE_KEYS = ("model.", "partition.", "data._target_", "compressor.channel_ratio", "compressor.shapes")


def _flat(node: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _neutral(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in RESULT_NEUTRAL)


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any],
                   derived: Optional[Mapping[str, Any]] = None) -> List[Tuple[str, Any, Any]]:
    """(key, saved value, current value) for each key that changes the results, sorted; `derived`
    (dotted keys) overlays the current config."""
    old, new = _flat(saved), {**_flat(current), **(derived or {})}
    old.update({k: v for k, v in ADDED_DEFAULTS.items() if k not in old and k in new})
    return [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(old.keys() | new.keys())
            if not _neutral(k) and old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def load_state(cfg: DictConfig, run_dir: Path) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume from; None for resume=false or where there is none (said so)."""
    path = run_dir / checkpoint.NAME
    if resume_mode(cfg) == "false":
        return None
    if not path.exists():
        log.info(f"resume={resume_mode(cfg)} but {path} does not exist: starting fresh")
        return None
    state = checkpoint.load(path, (*checkpoint.REQUIRED, "summary"))  # the run's summary goes on
    log.info(f"resuming from {path} after epoch {state['epoch']}")
    return state


def check_config(cfg: DictConfig, state: Mapping[str, Any], path: Path,
                 derived: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The keys that change the results and differ from the checkpoint's config: refused (one line
    listing them) for resume=true, logged and returned for resume=force. `derived`: the keys the
    data decided, by dotted name (edgesplit.assemble.derived_config), as the checkpoint keeps them."""
    force = resume_mode(cfg) == "force"
    saved = state.get("config")
    if not isinstance(saved, Mapping):
        if force:
            log.warning(f"{path} holds no config to compare with: resuming anyway (resume=force)")
            return []
        raise ConfigError(f"{path} holds no config to compare with: resume=force resumes anyway")
    current = OmegaConf.to_container(cfg, resolve=True)
    changes = config_changes(saved, current, derived)  # type: ignore[arg-type]
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes)
    if changes and not force:
        raise ConfigError(f"resume=true with a config that differs from the checkpoint's ({path}): "
                          f"{listed}; use the checkpoint's values, or resume=force to continue anyway")
    if changes:
        log.warning(f"resume=force: continuing {path} with changes: {listed}")
    return [k for k, _, _ in changes]


def _shape_changes(cfg: DictConfig, state: Mapping[str, Any], derived: Optional[Mapping[str, Any]]) -> str:
    """The keys that decide the units' shapes and differ from the checkpoint's config, as the end
    of a line: `model.width 0.5 in the checkpoint, 0.25 now`."""
    saved = state.get("config")
    current = OmegaConf.to_container(cfg, resolve=True)
    changes = [] if not isinstance(saved, Mapping) else [
        f"{k} {old!r} in the checkpoint, {new!r} now" for k, old, new
        in config_changes(saved, current, derived)  # type: ignore[arg-type]
        if k.startswith(SHAPE_KEYS)]
    return ", ".join(changes) or "no config key that shapes the model differs from the checkpoint's"


def _mismatch(units: Sequence[nn.Module], state: Mapping[str, Any]) -> Optional[str]:
    """The first tensor of the checkpoint (a unit's state, a parameter's optimizer state) whose name
    or shape the model lacks, or None."""
    saved = state["units"]
    if len(saved) != len(units):
        return f"it holds {len(saved)} units, the model {len(units)}"
    for i, unit in enumerate(units):
        if i not in saved:
            return f"it holds no unit {i}"
        own, theirs = unit.state_dict(), saved[i]
        for name in sorted(own.keys() ^ theirs.keys()):
            return f"unit {i} `{name}` is in the {'model' if name in own else 'checkpoint'} only"
        for name, tensor in own.items():
            if theirs[name].shape != tensor.shape:
                return (f"unit {i} `{name}` has shape {list(theirs[name].shape)}, "
                        f"the model {list(tensor.shape)}")
    params = {f"units.{i}.{n}": p for i, u in enumerate(units) for n, p in u.named_parameters()}
    for name, values in state["optimizer"].items():
        for key, value in values.items():
            p = params.get(name)
            if p is not None and torch.is_tensor(value) and value.dim() and value.shape != p.shape:
                return (f"the optimizer's `{key}` of `{name}` has shape {list(value.shape)}, "
                        f"the model {list(p.shape)}")
    return None


def check_fits(state: Mapping[str, Any], path: Path, units: Sequence[nn.Module], cfg: DictConfig,
               derived: Optional[Mapping[str, Any]] = None) -> None:
    """Every tensor of the checkpoint against the model built from the config (`units`, the
    bottleneck's included), before anything is restored (resume=force comes here with the config
    changed): CheckpointError naming the file, the first tensor that differs and the keys that
    explain it."""
    wrong = _mismatch(units, state)
    if wrong is not None:
        raise checkpoint.CheckpointError(f"{path} does not fit the model: {wrong}: "
                                         f"{_shape_changes(cfg, state, derived)}")
