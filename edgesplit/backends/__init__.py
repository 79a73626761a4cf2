"""Pipeline backends: naive (whole batch in sequence), gpipe (torchgpipe), dist (one process per stage)."""
from typing import Dict

from omegaconf import DictConfig

from edgesplit.backends.base import Backend, StepResult
from edgesplit.comm import CommMeter
from edgesplit.compression import BoundaryCodecs
from edgesplit.errors import ConfigError
from edgesplit.partition import Split

__all__ = ["Backend", "StepResult", "build_backend"]


def build_backend(cfg: DictConfig, split: Split, codecs: Dict[str, BoundaryCodecs],
                  meter: CommMeter) -> Backend:
    name = cfg.pipeline_backend.name
    if name == "naive":
        from edgesplit.backends.naive import NaiveBackend
        return NaiveBackend(cfg, split, codecs, meter)
    if name == "gpipe":
        from edgesplit.backends.gpipe import GPipeBackend
        return GPipeBackend(cfg, split, codecs, meter)
    if name == "dist":
        from edgesplit.backends.dist import DistBackend
        return DistBackend(cfg, split, codecs, meter)
    raise ConfigError(f"pipeline_backend.name={name!r} is unknown: allowed: naive, gpipe, dist")
