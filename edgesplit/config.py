"""Structured-config schema of every config group, registered in Hydra's ConfigStore, and range checks."""
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from edgesplit.errors import ConfigError, UserError


@dataclass
class ModelConfig:
    """`_target_` returns the list of layer units; it is called with num_classes and the other keys."""
    _target_: str = MISSING
    width: float = 1.0
    num_classes: Optional[int] = None  # null = the dataset's


@dataclass
class LoaderConfig:
    """The data keys the trainer reads; `_target_` is called with every other key of `data`."""
    name: str = MISSING  # the option's label in logs, HParams and reports
    batch_size: int = 1024
    eval_batch_size: Optional[int] = None  # null = batch_size
    num_workers: int = 2


LOADER_KEYS = frozenset(f.name for f in fields(LoaderConfig))


@dataclass
class DataConfig(LoaderConfig):
    """`_target_` returns edgesplit.data.Datasets, cut to the first train_size/val_size samples."""
    _target_: str = MISSING
    train_size: Optional[int] = None  # null = whole split
    val_size: Optional[int] = None


@dataclass
class CifarConfig(DataConfig):
    root: str = "data"
    download: bool = True
    augment: bool = True


@dataclass
class PartitionConfig:
    front: int = 1
    back: int = 1
    cloud_stages: int = 1


@dataclass
class CompressorConfig:
    """Codecs of the two boundaries; `activation`/`gradient` are `_target_` specs of edgesplit.codecs."""
    name: str = MISSING
    activation: Any = MISSING
    gradient: Any = MISSING
    # Per-boundary override: {activation: ..., gradient: ...} replaces the defaults above at the
    # 'front' (edge-front -> cloud) or 'back' (cloud -> edge-back) boundary.
    front: Optional[Any] = None
    back: Optional[Any] = None
    # The gradient goes back only at the positions the forward payload kept (seed's pruning rule).
    gradient_reuses_support: bool = True
    eval_compressed: bool = True


@dataclass
class NoCompressorConfig(CompressorConfig):
    name: str = "none"


@dataclass
class PruneConfig(CompressorConfig):
    name: str = "prune"
    ratio: float = 0.1


@dataclass
class QuantizeConfig(CompressorConfig):
    name: str = "quantize"
    bits: int = 8


@dataclass
class PruneQuantizeConfig(CompressorConfig):
    name: str = "prune_quantize"
    ratio: float = 0.1
    bits: int = 8


@dataclass
class ImageFolderConfig(DataConfig):
    root: str = "data/images"  # ROOT/<class>/<image>, or ROOT/train/... and ROOT/val/...
    image_size: int = 32  # every image is resized to image_size x image_size
    val_fraction: float = 0.2  # without train/ and val/ folders: this share of the images validates
    augment: bool = True


@dataclass
class OptimizerConfig:
    """`_target_` is a torch.optim class, called with the parameters (`_partial_`); its learning
    rate and weight decay follow `schedule.*`, so the seed's keys keep working."""
    _target_: str = MISSING
    _partial_: bool = True
    lr: Any = "${schedule.lr}"
    weight_decay: Any = "${schedule.weight_decay}"


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    momentum: Any = "${schedule.momentum}"


@dataclass
class AdamWConfig(OptimizerConfig):
    _target_: str = "torch.optim.AdamW"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    lr: float = 0.4
    epochs: int = 200
    warmup_epochs: int = 20
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class LinkConfig:
    """Emulated edge link (dist backend only): null = no shaping."""
    bandwidth_mbps: Optional[float] = None
    uplink_mbps: Optional[float] = None  # null = bandwidth_mbps
    downlink_mbps: Optional[float] = None  # null = bandwidth_mbps
    latency_ms: float = 0.0


@dataclass
class BackendConfig:
    _target_: str = MISSING  # the Backend class
    name: str = MISSING  # naive | gpipe | dist: the label in summary.json and reports
    chunks: int = 4
    devices: Any = "auto"  # 'auto' or a list such as [cpu, cpu, cpu] / [0, 1, 0]
    checkpoint: str = "except_last"  # always | except_last | never
    deferred_batch_norm: bool = False


@dataclass
class DistConfig(BackendConfig):
    name: str = "dist"
    link: LinkConfig = field(default_factory=LinkConfig)
    # where the edge listens for role=edge/cloud without torchrun (torchrun brings its own rendezvous)
    master_addr: str = "127.0.0.1"
    master_port: int = 29533
    timeout_s: float = 60.0  # the longest silence tolerated from a peer (and the time one gets to connect)
    role: Optional[str] = None  # edge | cloud (under torchrun); null = start every rank locally
    order: str = "gpipe"  # gpipe | 1f1b: the order of micro-batch forwards and backwards
    # shared secret of the edge and the cloud hosts (else $EDGESPLIT_SECRET; a local run makes one)
    secret: Optional[str] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    compressor: Any = MISSING
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: Any = MISSING
    pipeline_backend: Any = MISSING
    seed: int = 0
    resume: Any = False  # false | true | force (see RESUME_MODES)
    threads: Optional[int] = None  # torch threads; null = torch's default
    log_every: int = 10  # steps between console log lines
    hparam_keys: List[str] = field(default_factory=list)  # extra keys shown in TensorBoard's HParams


def register_configs() -> None:
    """Schemas under `schemas/<group>/<option>`, out of the groups' own option lists; each yaml
    lists its schema first in `defaults` (`- /schemas/<group>/<option>@_here_`)."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, name, node in [
            ("model", "base", ModelConfig), ("data", "base", DataConfig), ("data", "cifar10", CifarConfig),
            ("data", "imagefolder", ImageFolderConfig), ("optimizer", "sgd", SGDConfig),
            ("optimizer", "adamw", AdamWConfig),
            ("partition", "base", PartitionConfig), ("schedule", "base", ScheduleConfig),
            ("compressor", "none", NoCompressorConfig), ("compressor", "prune", PruneConfig),
            ("compressor", "quantize", QuantizeConfig), ("compressor", "prune_quantize", PruneQuantizeConfig),
            ("pipeline_backend", "base", BackendConfig), ("pipeline_backend", "dist", DistConfig)]:
        cs.store(group=f"schemas/{group}", name=name, node=node)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: List[str]) -> DictConfig:
    """The config train.py would run with these overrides (for tests, benchmarks, workers)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def instantiate_target(spec: Any, key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate(spec, **kwargs); a UserError of the target passes through, any other
    failure (import, arguments, the call) is a one-line ConfigError naming `key`."""
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        cause = e.__cause__ if e.__cause__ is not None else e
        reason = " ".join(str(cause).split()) or type(cause).__name__
        raise ConfigError(f"{key}={spec['_target_']!r} cannot be built: {reason}") from None


CHECKPOINT_MODES = ("always", "except_last", "never")
RESUME_MODES = ("false", "true", "force")
MAX_WIDTH = 8.0  # parameters grow with width²: MobileNetV2 at 8 has ~140 M, at 100 ~22 G
# Groups whose extra keys (`+model.depth=3`) go to their `_target_`, which names any it does not take.
OPEN_GROUPS = ("model", "data")
ORDERS = ("gpipe", "1f1b")
_ABSENT = object()


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def resume_mode(cfg: DictConfig) -> str:
    """`resume` as one of RESUME_MODES: the command line gives a bool for true/false, a str for force."""
    value = cfg.resume
    mode = str(value).lower() if isinstance(value, (bool, str)) else repr(value)
    _check(mode in RESUME_MODES, "resume", value, f"allowed: {', '.join(RESUME_MODES)}")
    return mode


def _unknown_keys(node: DictConfig, prefix: str) -> List[str]:
    """Keys that Hydra's `+key=...` added to a schema node (it bypasses the schema's struct flag)."""
    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return []  # a `_target_` spec such as compressor.activation: its target takes its keys
    known = {f.name for f in fields(schema)}
    keys = [str(k) for k in node.keys()]
    out = [f"{prefix}{k}" for k in keys if k not in known]
    for k in known & set(keys):
        child = node._get_node(k)
        if isinstance(child, DictConfig) and f"{prefix}{k}" not in OPEN_GROUPS:
            out += _unknown_keys(child, f"{prefix}{k}.")
    return out


def validate(cfg: DictConfig) -> None:
    """Range checks that a schema cannot express; raise ConfigError naming the key. The checks that
    need the model's unit count are in validate_partition."""
    unknown = _unknown_keys(cfg, "")
    if unknown:
        raise ConfigError(f"unknown key {', '.join(unknown)}: not in the schema (edgesplit/config.py); "
                          f"check the spelling (`+` adds a new key, it does not check one)")
    p, s, d, b = cfg.partition, cfg.schedule, cfg.data, cfg.pipeline_backend
    resume_mode(cfg)
    _check(0 < cfg.model.width <= MAX_WIDTH, "model.width", cfg.model.width,
           f"must be in (0, {MAX_WIDTH:g}] (the parameter count grows with width squared)")
    n = cfg.model.num_classes
    _check(n is None or n >= 1, "model.num_classes", n, "must be >= 1 or null (= the dataset's)")
    _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    for key in ("train_size", "val_size", "eval_batch_size"):
        v = d[key]
        _check(v is None or v >= 1, f"data.{key}", v, "must be >= 1 or null")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    _check(p.front >= 1, "partition.front", p.front, "must be >= 1 (the edge keeps the input)")
    _check(p.back >= 1, "partition.back", p.back, "must be >= 1 (the edge keeps the labels)")
    _check(p.cloud_stages >= 1, "partition.cloud_stages", p.cloud_stages, "must be >= 1")
    c = cfg.compressor
    if "ratio" in c:
        _check(0 < c.ratio <= 1, "compressor.ratio", c.ratio, "must be in (0, 1]")
    if "bits" in c:
        _check(1 <= c.bits <= 16, "compressor.bits", c.bits, "must be in 1..16")
    _check(s.lr > 0 and math.isfinite(s.lr), "schedule.lr", s.lr, "must be finite and > 0")
    _check(s.epochs >= 1, "schedule.epochs", s.epochs, "must be >= 1")
    _check(s.warmup_epochs >= 0, "schedule.warmup_epochs", s.warmup_epochs, "must be >= 0")
    _check(0 <= s.momentum < 1, "schedule.momentum", s.momentum, "must be in [0, 1)")
    _check(s.weight_decay >= 0, "schedule.weight_decay", s.weight_decay, "must be >= 0")
    if "betas" in cfg.optimizer:
        betas = list(cfg.optimizer.betas)
        _check(len(betas) == 2 and all(0 <= v < 1 for v in betas), "optimizer.betas", betas,
               "must be two numbers in [0, 1)")
    if "eps" in cfg.optimizer:
        _check(cfg.optimizer.eps > 0, "optimizer.eps", cfg.optimizer.eps, "must be > 0")
    if "image_size" in d:
        _check(d.image_size >= 8, "data.image_size", d.image_size, "must be >= 8")
        _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    _check(1 <= b.chunks <= d.batch_size, "pipeline_backend.chunks", b.chunks,
           f"must be in 1..data.batch_size ({d.batch_size})")
    _check(b.name != "naive" or b.chunks == 1, "pipeline_backend.chunks", b.chunks,
           "naive runs the whole batch at once: must be 1 (micro-batches: pipeline_backend=gpipe or dist)")
    _check(b.checkpoint in CHECKPOINT_MODES, "pipeline_backend.checkpoint", b.checkpoint,
           f"allowed: {', '.join(CHECKPOINT_MODES)}")
    _check(cfg.threads is None or cfg.threads >= 1, "threads", cfg.threads, "must be >= 1 or null")
    _check(cfg.log_every >= 1, "log_every", cfg.log_every, "must be >= 1 (steps between log lines)")
    for key in cfg.hparam_keys:
        _check(OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT, "hparam_keys", key,
               "not a key of this config")
    if "link" in b:  # the dist backend's keys
        for key in ("bandwidth_mbps", "uplink_mbps", "downlink_mbps"):
            v = b.link[key]
            _check(v is None or v > 0, f"pipeline_backend.link.{key}", v, "must be > 0 or null")
        _check(b.link.latency_ms >= 0, "pipeline_backend.link.latency_ms", b.link.latency_ms, "must be >= 0")
        _check(b.timeout_s > 0, "pipeline_backend.timeout_s", b.timeout_s, "must be > 0")
        _check(b.role in (None, "edge", "cloud"), "pipeline_backend.role", b.role,
               "allowed: edge, cloud, null")
        _check(b.order in ORDERS, "pipeline_backend.order", b.order, f"allowed: {', '.join(ORDERS)}")


def validate_partition(p: DictConfig, num_units: int) -> None:
    """The partition checks that need the model: the cloud keeps at least one unit per stage."""
    cloud = num_units - p.front - p.back
    _check(cloud >= 1, "partition.front+partition.back", p.front + p.back,
           f"must be < {num_units} (the model has {num_units} units; the cloud needs at least one)")
    _check(p.cloud_stages <= cloud, "partition.cloud_stages", p.cloud_stages,
           f"must be in 1..{cloud} (the cloud holds {cloud} units)")
