"""The `plan` config group's schema, registered beside train.py's, and composing the planner's configs."""
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from edgesplit.config import CONF_DIR, register_configs

# The compressor options the default space covers (conf/compressor/<name>.yaml).
PREFIX = "plan."
DEFAULT_COMPRESSORS = ["none", "prune", "quantize8", "quantize4", "quantize2"]


@dataclass
class PlanConfig:
    """The candidate space, the edge and cloud against this host, and where the output goes."""
    fronts: List[int] = field(default_factory=lambda: [1, 2, 3])  # partition.front values
    backs: List[int] = field(default_factory=lambda: [1, 2, 3])  # partition.back values
    compressors: List[str] = field(default_factory=lambda: list(DEFAULT_COMPRESSORS))
    chunks: List[int] = field(default_factory=list)  # empty = [pipeline_backend.chunks]
    edge_slowdown: float = 1.0  # the edge's compute time as a multiple of this host's
    cloud_speedup: float = 1.0  # the cloud computes this many times faster than this host
    # a profile written by `python -m edgesplit.plan.profile` (e.g. on the edge device); null = measure
    profile: Optional[str] = None
    cache_dir: Optional[str] = None  # null = ~/.cache/edgesplit
    out_dir: str = "plan"  # the table, plan.json, plan.png
    repeats: int = 5  # timed repeats per measurement (the median is kept), after `warmup` untimed ones
    warmup: int = 2
    # timed steps of each of three reference splits run on dist to fit the backend's own cost
    # (docs/plan.md); 0: the units' compute alone
    calibrate: int = 10
    top: int = 3  # candidates the printed `train.py -m` command measures
    validate: int = 0  # run this many candidates on dist and set measured beside predicted (0: none)
    validate_steps: int = 20  # timed training steps per validated candidate (their median is kept)
    validate_warmup: int = 3  # untimed steps before them
    results: Any = None  # a sweep dir (or a list of them) whose accuracies the plan joins; null = none


def register_plan_configs() -> None:
    """train.py's schemas and `schemas/plan/base` (conf/plan/default.yaml's schema)."""
    register_configs()
    ConfigStore.instance().store(group="schemas/plan", name="base", node=PlanConfig)


def compose_plan(overrides: List[str]) -> Tuple[DictConfig, DictConfig]:
    """(train.py's config, the `plan` group's) of the command line's overrides: `plan.KEY=V` set the
    plan group (conf/plan/default.yaml), every other one train.py's tree."""
    register_plan_configs()
    plan_overrides = [o for o in overrides if o.startswith(PREFIX)]
    rest = [o for o in overrides if not o.startswith(PREFIX)]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        train_cfg = compose(config_name="config", overrides=rest)
        return train_cfg, compose(config_name="plan/default", overrides=plan_overrides).plan
