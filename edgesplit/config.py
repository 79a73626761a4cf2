"""Structured-config schema of every config group, registered in Hydra's ConfigStore; composing and
building from it (the range checks are in validate.py)."""
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, List, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig

from edgesplit.clients.schema import ClientsConfig
from edgesplit.compressor_config import (BottleneckConfig, DeltaConfig, NoCompressorConfig, PruneConfig,
                                         PruneQuantizeConfig, QuantizeConfig, RandTopKConfig)
from edgesplit.errors import ConfigError, UserError
from edgesplit.options import DEFAULT_LOSS_SCALE
from edgesplit.privacy.schema import PrivacyConfig


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
    # where the training set lives: cpu = the DataLoader (workers, per-sample transforms); cuda
    # (or cuda:N) = the whole set resident on that GPU, augmented there per batch; cpu_resident =
    # the same resident path on the host (tests, CPU runs without loader workers). See resident.py.
    device: str = "cpu"
    # two labels kept, relabelled 0 and 1 (a binary task, e.g. for the label-leak attacks); null = all;
    # applied by build_datasets to any dataset
    binary_classes: Optional[List[int]] = None
    # one label as 1, every other as 0, every sample kept (an imbalanced binary task: ~10 % positives
    # on ten classes, Li et al.'s label-leak setting); null = all labels; not with binary_classes
    one_vs_rest: Optional[int] = None


LOADER_KEYS = frozenset(f.name for f in fields(LoaderConfig))


@dataclass
class DataConfig(LoaderConfig):
    """`_target_` returns edgesplit.data.datasets.Datasets, cut to the first train_size/val_size samples."""
    _target_: str = MISSING
    train_size: Optional[int] = None  # null = whole split
    val_size: Optional[int] = None


@dataclass
class CifarConfig(DataConfig):
    root: str = "data"
    download: bool = True
    augment: Any = True  # true | false | fixed (each sample's crop and flip kept every epoch)


@dataclass
class DigitsConfig(DataConfig):
    augment: Any = False  # true | false | fixed: a random crop (padding 4), no flip (data.digits)


@dataclass
class PartitionConfig:
    front: int = 1
    back: int = 1
    cloud_stages: int = 1


@dataclass
class ImageFolderConfig(DataConfig):
    root: str = "data/images"  # ROOT/<class>/<image>, or ROOT/train/... and ROOT/val/...
    image_size: int = 32  # every image is resized to image_size x image_size
    val_fraction: float = 0.2  # without train/ and val/ folders: this share of the images validates
    augment: Any = True  # true | false | fixed (each sample's crop and flip kept every epoch)


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
    checkpoint: str = "except_last"  # CheckpointMode
    deferred_batch_norm: bool = False


@dataclass
class DistConfig(BackendConfig):
    name: str = "dist"
    link: LinkConfig = field(default_factory=LinkConfig)
    master_addr: str = "127.0.0.1"  # where the edge listens for role=edge/cloud without torchrun
    master_port: int = 29533
    timeout_s: float = 60.0  # the longest silence tolerated from a peer (and the time one gets to connect)
    role: Optional[str] = None  # Role (under torchrun); null = start every rank locally
    order: str = "gpipe"  # Order
    # shared secret of the edge and the cloud hosts (else $EDGESPLIT_SECRET; a local run makes one)
    secret: Optional[str] = None
    secret_file: Optional[str] = None  # a file that holds the secret (the command line may not)
    edge_slowdown: float = 1.0  # emulation: each edge compute segment padded to this many times its time
    edges: Optional[int] = None  # many edges (clients.count > 1): edge processes; null = clients.count
    client: Optional[int] = None  # many edges across hosts, role=edge: the client this edge host is


@dataclass
class LoggerConfig:
    """What a run logs besides TensorBoard, summary.json and metrics.csv (always written):
    `_target_` a class taking run_dir, config, overrides and the option's other keys (see
    edgesplit.logs.logbook.build_logger); null = nothing more."""
    _target_: Optional[str] = None
    name: str = "tensorboard"


@dataclass
class MLflowConfig(LoggerConfig):
    _target_: Optional[str] = "edgesplit.logs.mlflow_log.MLflowLogger"
    name: str = "mlflow"
    tracking_uri: Optional[str] = None  # null = sqlite:///<sweep dir>/mlflow.db (one run: its run dir)
    experiment_name: Optional[str] = None  # null = the name of that dir


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    compressor: Any = MISSING
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: Any = MISSING
    pipeline_backend: Any = MISSING
    logger: Any = MISSING
    clients: Any = MISSING  # edgesplit.clients.schema
    privacy: Any = MISSING  # edgesplit.privacy.schema
    seed: int = 0
    resume: Any = False  # ResumeMode (the command line gives a bool for true/false)
    threads: Optional[int] = None  # torch threads; null = torch's default
    log_every: int = 10  # steps between console log lines
    hparam_keys: List[str] = field(default_factory=list)  # extra keys shown in TensorBoard's HParams
    # PrecisionName: torch.autocast on every side's device; fp16 scales the loss (GradScaler)
    precision: str = "fp32"
    channels_last: bool = False  # units and 4-D inputs in torch.channels_last memory format
    loss_scale: float = DEFAULT_LOSS_SCALE  # precision=fp16: the GradScaler's initial scale
    checkpoint: Any = field(default_factory=lambda: {"monitor": "val/acc1", "mode": "max"})  # run/best.py
    init_from: Optional[str] = None  # a checkpoint file whose weights a new run starts from


def register_configs() -> None:
    """Schemas under `schemas/<group>/<option>`, out of the groups' own option lists; each yaml
    lists its schema first in `defaults` (`- /schemas/<group>/<option>@_here_`)."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, name, node in [
            ("model", "base", ModelConfig), ("data", "base", DataConfig), ("data", "cifar10", CifarConfig),
            ("data", "digits", DigitsConfig),
            ("data", "imagefolder", ImageFolderConfig), ("optimizer", "sgd", SGDConfig),
            ("optimizer", "adamw", AdamWConfig),
            ("partition", "base", PartitionConfig), ("schedule", "base", ScheduleConfig),
            ("compressor", "none", NoCompressorConfig), ("compressor", "prune", PruneConfig),
            ("compressor", "quantize", QuantizeConfig), ("compressor", "prune_quantize", PruneQuantizeConfig),
            ("compressor", "delta", DeltaConfig), ("compressor", "randtopk", RandTopKConfig),
            ("compressor", "bottleneck", BottleneckConfig),
            ("pipeline_backend", "base", BackendConfig), ("pipeline_backend", "dist", DistConfig),
            ("logger", "tensorboard", LoggerConfig), ("logger", "mlflow", MLflowConfig),
            ("clients", "base", ClientsConfig), ("privacy", "base", PrivacyConfig)]:
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
