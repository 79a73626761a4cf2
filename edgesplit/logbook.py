"""TensorBoard under a run's tb/: the scalars and the HParams view (summary.json: run_summary.py)."""
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

# Metrics TensorBoard's HParams view compares runs by (each is also a scalar tag below).
HPARAM_METRICS = ["val/acc1", "val/best_acc1", "val/loss", "train/loss", "time/batch_s",
                  "comm/up_bytes", "comm/down_bytes"]
# The keys every run shows in the HParams view, besides its command-line overrides.
HPARAM_KEYS = ["model.width", "data.name", "data.batch_size", "partition.front", "partition.back",
               "partition.cloud_stages", "compressor.name", "compressor.ratio", "compressor.bits",
               "schedule.lr", "schedule.epochs", "pipeline_backend.name", "pipeline_backend.chunks", "seed"]


def hparam_values(cfg: DictConfig, overrides: List[str]) -> Dict[str, Any]:
    """Flat key -> int/float/str/bool for the HParams view: HPARAM_KEYS, the config's `hparam_keys`
    and the overrides (lists stringified, None left out)."""
    given = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    out: Dict[str, Any] = {}
    for key in dict.fromkeys(HPARAM_KEYS + list(cfg.hparam_keys) + list(given)):
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):  # a config group: its chosen option, e.g. compressor=quantize4
            value = given.get(key)
        if value is None:  # e.g. compressor.bits of a pruning run
            continue
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class Logbook:
    """One TensorBoard writer per run (closed at the end: a sweep runs its jobs in one process)."""

    def __init__(self, run_dir: Path, cfg: DictConfig, overrides: List[str]) -> None:
        self.run_dir = run_dir
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        # The HParams plugin's experiment and session events, in this run's own event file (not
        # add_hparams' sub-run): the view then shows the latest value of each metric's scalars.
        exp, ssi, sei = hparams(hparam_values(cfg, overrides), {m: 0.0 for m in HPARAM_METRICS})
        events = self.writer.file_writer
        assert events is not None
        for event in (exp, ssi, sei):
            events.add_summary(event)

    def scalars(self, values: Dict[str, float], step: int, flush: bool = False) -> None:
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        if flush:  # at epoch ends; SummaryWriter also flushes by itself every few seconds
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
