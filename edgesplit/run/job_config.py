"""A job's config from Hydra's and the command line: the checks that need the command line (a sweep
preset without -m, naive's micro-batches, a typed warm-up longer than the run), run before Hydra
writes the run dir (run/guard.py) and again in the job (train.py), which logs what they changed."""
import copy
import math
from typing import Any, Optional, Tuple, cast

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from edgesplit.errors import ConfigError
from edgesplit.validate import validate

CHUNKS = "pipeline_backend.chunks"
WARMUP = "schedule.warmup_epochs"


def _given(hydra_cfg: Any) -> set:
    """The keys the command line sets (a sweep job's: its shared and swept overrides)."""
    return {str(o).split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task}


def _multirun(hydra_cfg: Any) -> bool:
    return bool(hydra_cfg.mode == RunMode.MULTIRUN)


def check_single_run_is_no_sweep(hydra_cfg: Any) -> None:
    """A sweep preset (hydra.sweeper.params) run without -m would train one default job silently;
    one whose swept keys are all given on the command line is one job (as with -m) and runs."""
    given = _given(hydra_cfg)
    params = {k: v for k, v in (hydra_cfg.sweeper.get("params") or {}).items() if k not in given}
    if _multirun(hydra_cfg) or not params:
        return
    jobs = math.prod(len(str(v).split(",")) for v in params.values())
    preset = hydra_cfg.runtime.choices.get("experiment") or "this config"
    raise ConfigError(f"experiment={preset} is a sweep of {jobs} jobs over {', '.join(params)}: "
                      f"add -m to run it (python train.py -m experiment={preset} ...)")


def naive_chunks(cfg: DictConfig, hydra_cfg: Any) -> Tuple[DictConfig, Optional[str]]:
    """naive runs the whole batch at once. `pipeline_backend.chunks` other than 1 from a preset or a
    sweep's shared overrides is ignored: returns the config with chunks 1 (a new one; Hydra's is not
    written to) and the line that says so. Typed on a single run's command line it stays, and
    validate refuses it."""
    b = cfg.pipeline_backend
    if b.name != "naive" or b.chunks == 1:
        return cfg, None
    sweep, typed = _multirun(hydra_cfg), CHUNKS in _given(hydra_cfg)
    if typed and not sweep:
        return cfg, None
    where = "the sweep's shared overrides" if typed else "the preset or config"
    note = (f"pipeline_backend=naive runs the whole batch at once: {CHUNKS}={b.chunks} from {where} "
            f"is ignored (chunks 1)")
    return cast(DictConfig, OmegaConf.merge(cfg, {"pipeline_backend": {"chunks": 1}})), note


def check_typed_warmup(cfg: DictConfig, hydra_cfg: Any) -> None:
    """A warm-up typed on the command line must end within the run; the default (20 epochs, the
    seed's schedule) outlasting a short run is only a warning (validate)."""
    s = cfg.schedule
    if WARMUP in _given(hydra_cfg) and s.warmup_epochs > s.epochs:
        raise ConfigError(f"{WARMUP}={s.warmup_epochs} is invalid: must be at most schedule.epochs="
                          f"{s.epochs}, or the learning rate never reaches schedule.lr")


def job_config(cfg: DictConfig, hydra_cfg: Any) -> Tuple[DictConfig, Optional[str]]:
    """The checked config a job runs with, and what the checks changed (a line for its log);
    raises ConfigError naming what is wrong."""
    check_single_run_is_no_sweep(hydra_cfg)
    check_typed_warmup(cfg, hydra_cfg)
    cfg, note = naive_chunks(cfg, hydra_cfg)
    validate(cfg)
    return cfg, note


def task_config(config: DictConfig) -> DictConfig:
    """Hydra's whole config without its `hydra` node: what the job receives."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task
