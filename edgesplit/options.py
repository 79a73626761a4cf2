"""The config's option lists and limits, each spelled once: the schema names them, validate.py checks
against them, the assembled parts carry their types."""
from typing import Any, Literal, Tuple, TypeGuard, get_args

# The option lists, each once. The schema's fields (config.py) are `str` (OmegaConf takes no Literal, and
# an Enum field would turn a wrong value into a multi-line compose error): validate.py checks each
# value against its list, and the assembled parts (edgesplit.assemble) carry these types.
Rounding = Literal["nearest", "stochastic"]
Scale = Literal["tensor", "channel", "group"]
CacheDtype = Literal["float16", "bfloat16", "float32"]
EntropyMethod = Literal["none", "zlib", "zstd"]
PrecisionName = Literal["fp32", "bf16", "fp16"]
CheckpointMode = Literal["always", "except_last", "never"]
Order = Literal["gpipe", "1f1b"]  # the order of micro-batch forwards and backwards (dist)
Role = Literal["edge", "cloud"]
ResumeMode = Literal["false", "true", "force"]
# checkpoint.monitor: an epoch figure checkpoint_best.pt is kept by, and whether more is better
MonitorTag = Literal["val/acc1", "val/acc5", "val/loss", "train/acc1", "train/loss"]
MonitorMode = Literal["max", "min"]
ClientPartition = Literal["iid", "dirichlet", "shards"]  # clients.partition: who holds which samples
ClientAlgorithm = Literal["sequential", "sflv1", "sflv2"]  # clients.algorithm: edgesplit.clients
MAX_BITS = 16  # compressor.bits, first_bits, gradient_bits: 1..MAX_BITS
DEFAULT_LOSS_SCALE = 65536.0  # precision=fp16's initial loss scale: torch.amp.GradScaler's default
MAX_SEED = 2**63 - 1  # seed: 0..MAX_SEED, torch's range for a seed it also draws from
MAX_PORT = 65535  # pipeline_backend.master_port: 1..MAX_PORT
MAX_TIMEOUT_S = 86400.0  # pipeline_backend.timeout_s: a day; a longer silence is a dead peer
MAX_LATENCY_MS = 60000.0  # pipeline_backend.link.latency_ms: a minute, beyond any real link


def bits_in_range(bits: object) -> TypeGuard[int]:
    """The one range check of a bit width (the config's and a codec built in Python alike)."""
    return isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= MAX_BITS


def options(kind: Any) -> Tuple[str, ...]:
    """The values of an option list above, in order."""
    return tuple(get_args(kind))
