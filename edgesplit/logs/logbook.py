"""A run's logs: TensorBoard under tb/ (scalars, HParams), metrics.csv, and the `logger` option's
extra logger (logger=mlflow); summary.json is run_summary.py's."""
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, cast

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from edgesplit.errors import ConfigError
from edgesplit.logs.metrics_csv import write_metrics_csv
from edgesplit.logs.summary import RunSummary

log = logging.getLogger(__name__)
# The keys every run shows in the HParams view, besides its command-line overrides.
HPARAM_KEYS = ["model.width", "data.name", "data.batch_size", "partition.front", "partition.back",
               "partition.cloud_stages", "compressor.name", "compressor.ratio", "compressor.bits",
               "schedule.lr", "schedule.epochs", "pipeline_backend.name", "pipeline_backend.chunks", "seed"]


SECRET_KEY = "pipeline_backend.secret"
REDACTED = "<redacted>"


def redact(overrides: List[str]) -> List[str]:
    """The overrides as records may keep them: the dist link's secret replaced by REDACTED."""
    return [f"{o.split('=', 1)[0]}={REDACTED}" if o.lstrip("+~").split("=", 1)[0] == SECRET_KEY
            else o for o in overrides]


def hparam_values(cfg: DictConfig, overrides: List[str]) -> Dict[str, Any]:
    """Flat key -> int/float/str/bool for the HParams view: HPARAM_KEYS, the config's `hparam_keys`
    and the overrides (lists stringified, None left out)."""
    given = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    out: Dict[str, Any] = {}
    for key in dict.fromkeys(HPARAM_KEYS + list(cfg.hparam_keys) + list(given)):
        if key == SECRET_KEY:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):  # a config group: its chosen option, e.g. compressor=quantize4
            value = given.get(key)
        if value is None:  # e.g. compressor.bits of a pruning run
            continue
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def public_config(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config without the dist link's secret: what a checkpoint keeps (it may be handed
    to others) and an extra logger records."""
    container = cast(Dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    container.get("pipeline_backend", {}).pop("secret", None)
    return container


def build_logger(cfg: DictConfig, run_dir: Path, overrides: List[str]) -> Any:
    """The `logger` option's extra logger (None for logger=tensorboard): `logger._target_` called with
    the option's other keys and run_dir, config (public_config) and overrides; it offers
    log_epochs(rows), the rows of every finished epoch (epoch_tag_rows), and close(status)."""
    spec = cfg.get("logger")
    if spec is None or spec.get("_target_") is None:
        return None
    options = cast(Dict[str, Any], OmegaConf.to_container(spec, resolve=True))
    target = options.pop("_target_")
    options.pop("name", None)
    try:
        cls = get_class(target)
    except Exception as e:  # hydra says why in many types
        raise ConfigError(f"logger._target_={target!r} cannot be found: {' '.join(str(e).split())[:300]}")
    # called directly, not by hydra.utils.instantiate: the config holds `_target_`s of its own
    return cls(run_dir=str(run_dir), config=public_config(cfg), overrides=list(overrides), **options)


def epoch_tag_rows(summary: RunSummary) -> List[Dict[str, Any]]:
    """Per finished epoch its `epoch` and TensorBoard scalars by tag (an extra logger's metric names):
    the last epoch's every tag TensorBoard got, an earlier one's those its history record keeps."""
    rows, best = [], -math.inf
    for h in summary.history[:-1]:
        best = max(best, h.val_acc1)
        rows.append({"epoch": h.epoch, "train/loss": h.train_loss, "train/acc1": h.train_acc1,
                     "val/loss": h.val_loss, "val/acc1": h.val_acc1, "val/acc5": h.val_acc5,
                     "val/best_acc1": best, "lr": h.lr, "time/data_s": h.data_s,
                     "memory/peak_bytes": h.peak_memory_bytes, "comm/up_bytes": h.up_bytes_per_batch,
                     "comm/down_bytes": h.down_bytes_per_batch})
    if summary.history:
        rows.append({"epoch": summary.epochs, **summary.epoch_scalars()})
    return rows


class Logbook:
    """One TensorBoard writer per run (closed at the end: a sweep runs its jobs in one process)."""

    def __init__(self, run_dir: Path, cfg: DictConfig, overrides: List[str]) -> None:
        self.run_dir = run_dir
        self.extra = build_logger(cfg, run_dir, overrides)
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        # The HParams plugin's session start and end, in this run's own event file (not
        # add_hparams' sub-run), and no experiment: TensorBoard then builds the experiment from the
        # sessions of every run it reads, so a key that differs between runs shows as differing
        # (an experiment written per run lists each key as not differing, and one run's wins).
        _, ssi, sei = hparams(hparam_values(cfg, overrides), {})
        events = self.writer.file_writer
        assert events is not None
        for event in (ssi, sei):
            events.add_summary(event)

    def scalars(self, values: Dict[str, float], step: int, flush: bool = False) -> None:
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        if flush:  # at epoch ends; SummaryWriter also flushes by itself every few seconds
            self.writer.flush()

    def record_epoch(self, summary: RunSummary) -> None:
        """An epoch ended (summary.json is written): TensorBoard, metrics.csv, the extra logger."""
        self.scalars(summary.epoch_scalars(), summary.epochs, flush=True)
        write_metrics_csv(self.run_dir, summary)
        if self.extra is not None:
            try:
                self.extra.log_epochs(epoch_tag_rows(summary))
            except Exception as e:  # a logging server that went away does not stop the training
                log.warning(f"logger: {type(e).__name__}: {' '.join(str(e).split())[:300]}; "
                            f"it logs no more in this run")
                self.extra = None

    def close(self, status: Optional[str] = None) -> None:
        """`status`: the run's (run_summary.STATUSES); the extra logger records how the run ended."""
        self.writer.close()
        if self.extra is not None:
            try:
                self.extra.close(status or "failed")
            except Exception as e:
                log.warning(f"logger: could not close the run: {' '.join(str(e).split())[:300]}")
            self.extra = None
