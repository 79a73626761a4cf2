"""The planner's inputs from the command line: train.py's config (validated, assembled once per
compressor option of the space), the `plan` group's keys checked, the link, schedules and devices."""
from dataclasses import dataclass
from typing import Dict, List

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import torch

from edgesplit.assemble import RunParts, assemble
from edgesplit.backends.remote.launch import threads_per_rank
from edgesplit.errors import ConfigError
from edgesplit.plan.cache import compressor_id
from edgesplit.plan.memory import optimizer_state_factor
from edgesplit.plan.schema import compose_plan
from edgesplit.plan.space import Devices
from edgesplit.plan.step_model import Link, Schedule
from edgesplit.validate import validate

BACKEND = "pipeline_backend"


@dataclass
class PlanInputs:
    """Everything a plan is computed from; `parts` and `codec_ids` by compressor option, `schedules`
    and `rows` (a micro-batch's samples) by chunks."""
    cfg: DictConfig
    plan: DictConfig
    overrides: List[str]
    parts: Dict[str, RunParts]
    codec_ids: Dict[str, str]
    link: Link
    schedules: Dict[int, Schedule]
    rows: Dict[int, int]
    devices: Devices
    batch_size: int
    state_factor: int


def _compose(overrides: List[str]) -> "tuple[DictConfig, DictConfig]":
    """compose_plan, its errors as one line naming the override."""
    try:
        return compose_plan(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(" ".join(str(e).split("\n")[:2]).strip()) from None


def _positive(plan: DictConfig, key: str, least: float, what: str) -> None:
    values = plan[key] if OmegaConf.is_list(plan[key]) else [plan[key]]
    if OmegaConf.is_list(plan[key]) and not values:
        raise ConfigError(f"plan.{key}=[] is invalid: list at least one value")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < least:
            shown = OmegaConf.to_container(plan[key]) if OmegaConf.is_list(plan[key]) else plan[key]
            raise ConfigError(f"plan.{key}={shown!r} is invalid: {what}")


def check_plan(plan: DictConfig, batch_size: int) -> None:
    """The `plan` keys' ranges: one line naming the key."""
    for key in ("fronts", "backs"):
        _positive(plan, key, 1, "must be a list of unit counts >= 1")
    _positive(plan, "repeats", 1, "must be >= 1")
    _positive(plan, "warmup", 0, "must be >= 0")
    _positive(plan, "top", 1, "must be >= 1")
    _positive(plan, "validate", 0, "must be >= 0 (candidates to measure; 0: none)")
    _positive(plan, "validate_warmup", 0, "must be >= 0")
    _positive(plan, "calibrate", 0, "must be >= 0 (timed steps per reference split; 0: no calibration)")
    for key in ("edge_slowdown", "cloud_speedup"):
        if not plan[key] > 0:
            raise ConfigError(f"plan.{key}={plan[key]!r} is invalid: must be > 0")
    if not plan.compressors:
        raise ConfigError("plan.compressors=[] is invalid: list at least one compressor option")
    if any(not 1 <= m <= batch_size for m in plan.chunks):
        raise ConfigError(f"plan.chunks={list(plan.chunks)} is invalid: each must be in 1..data.batch_size "
                          f"({batch_size})")


def plan_inputs(overrides: List[str]) -> PlanInputs:
    """Compose, check and assemble the plan of these command-line overrides; the dist backend unless
    `pipeline_backend=` says otherwise (its link keys are the plan's link)."""
    if not any(o.startswith(f"{BACKEND}=") for o in overrides):
        overrides = [f"{BACKEND}=dist", *overrides]
    cfg, plan = _compose(overrides)
    validate(cfg)
    batch = int(cfg.data.batch_size)
    check_plan(plan, batch)
    parts: Dict[str, RunParts] = {}
    for name in plan.compressors:
        if not isinstance(name, str) or "=" in name:
            raise ConfigError(f"plan.compressors: {name!r} is not a compressor option (conf/compressor/)")
        try:
            c, _ = compose_plan([*overrides, f"compressor={name}"])
        except (HydraException, OmegaConfBaseException):
            raise ConfigError(f"plan.compressors: {name!r} is not a compressor option "
                              f"(conf/compressor/)") from None
        if "channel_ratio" in c.compressor:
            raise ConfigError(f"plan.compressors: {name!r} adds a learned bottleneck's units: not planned")
        validate(c)
        first = next(iter(parts.values()), None)
        parts[name] = (assemble(c) if first is None else
                       assemble(c, first.spec.facts, first.split.units))
    b = cfg.pipeline_backend
    if b.name == "dist" and b.get("role") is None:  # profile at the threads each local rank gets
        torch.set_num_threads(threads_per_rank(int(cfg.partition.cloud_stages) + 1, cfg.threads))
    link = b.get("link") or {}
    chunks = [int(m) for m in plan.chunks] or [int(b.chunks)]
    order = str(b.get("order") or "gpipe")
    return PlanInputs(
        cfg, plan, overrides, parts,
        {name: compressor_id(p.spec.codecs.compressor) for name, p in parts.items()},
        Link(link.get("uplink_mbps") or link.get("bandwidth_mbps"),
             link.get("downlink_mbps") or link.get("bandwidth_mbps"), float(link.get("latency_ms") or 0.0)),
        {m: Schedule(m, order, str(b.checkpoint)) for m in chunks}, {m: -(-batch // m) for m in chunks},
        Devices(float(plan.edge_slowdown), float(plan.cloud_speedup)), batch,
        optimizer_state_factor(OmegaConf.to_container(cfg.optimizer, resolve=True)))  # type: ignore[arg-type]
