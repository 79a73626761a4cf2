"""Pipeline backends: naive (whole batch in sequence), gpipe (torchgpipe), dist (remote: one
process per stage); `pipeline_backend._target_` names the class."""
from typing import Dict

from hydra.utils import get_class
from omegaconf import DictConfig

from edgesplit.backends.base import Backend, StepResult
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs
from edgesplit.errors import ConfigError
from edgesplit.model.partition import Split

__all__ = ["Backend", "StepResult", "build_backend"]


def build_backend(cfg: DictConfig, split: Split, codecs: Dict[str, BoundaryCodecs],
                  meter: CommMeter) -> Backend:
    target = cfg.pipeline_backend._target_
    try:
        cls = get_class(target)
    except Exception as e:
        raise ConfigError(f"pipeline_backend._target_={target!r} cannot be imported: "
                          f"{str(e).strip().splitlines()[-1]}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"pipeline_backend._target_={target!r} is not a subclass of "
                          f"edgesplit.backends.Backend")
    return cls(cfg, split, codecs, meter)
