"""Pipeline backends: naive (whole batch in sequence), gpipe (torchgpipe), dist (remote: one
process per stage); `pipeline_backend._target_` names the class."""
from hydra.utils import get_class

from edgesplit.assemble import RunParts
from edgesplit.backends.base import Backend, StepResult
from edgesplit.boundary.meter import CommMeter
from edgesplit.errors import ConfigError

__all__ = ["Backend", "StepResult", "build_backend"]


def build_backend(parts: RunParts, meter: CommMeter) -> Backend:
    """The backend class that `pipeline_backend._target_` names, built on the assembled run."""
    target = parts.spec.pipeline.target
    try:
        cls = get_class(target)
    except Exception as e:
        raise ConfigError(f"pipeline_backend._target_={target!r} cannot be imported: "
                          f"{str(e).strip().splitlines()[-1]}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"pipeline_backend._target_={target!r} is not a subclass of "
                          f"edgesplit.backends.Backend")
    return cls(parts, meter)
