"""Structured-config schema of the `compressor` group: each option's keys (the codecs they build
are in edgesplit.codecs.build)."""
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING


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
    warmup_epochs: int = 0  # the first epochs send raw values (counted as raw bytes)
    # Forward activations: each sample's quantization residual is added to it at its next visit.
    error_feedback: bool = False
    # Per-sample state (delta references, error-feedback residuals): its dtype, and a folder for
    # on-disk memmaps (null: in RAM).
    cache_dtype: str = "float16"  # CacheDtype
    cache_dir: Optional[str] = None
    # a lossless stage (edgesplit.codecs.Entropy) around every codec built here, or none
    entropy: str = "none"  # EntropyMethod


@dataclass
class NoCompressorConfig(CompressorConfig):
    name: str = "none"


@dataclass
class PruneConfig(CompressorConfig):
    name: str = "prune"
    ratio: float = 0.1


@dataclass
class RandTopKConfig(CompressorConfig):
    name: str = "randtopk"
    ratio: float = 0.1
    explore: float = 0.1  # the share of the kept entries drawn at random outside the top set


@dataclass
class QuantizingConfig(CompressorConfig):
    """The keys of every quantizing option (see edgesplit.codecs.Quantize)."""
    bits: int = 8
    rounding: str = "nearest"  # Rounding
    scale: str = "tensor"  # Scale (prune_quantize: tensor | group)
    group_size: int = 512  # elements per scale group (scale=group)


@dataclass
class QuantizeConfig(QuantizingConfig):
    name: str = "quantize"


@dataclass
class DeltaConfig(QuantizingConfig):
    """AQ-SGD: activations as quantized changes from each sample's previous visit."""
    name: str = "delta"
    bits: int = 4
    first_bits: Optional[int] = 8  # a sample's first visit (null: raw values)
    gradient_bits: int = 8


@dataclass
class BottleneckConfig(QuantizingConfig):
    """A trainable encoder/decoder pair at each boundary (edgesplit.model.bottleneck), then a quantizer."""
    name: str = "bottleneck"
    channel_ratio: float = 0.25  # channels the encoder keeps


@dataclass
class PruneQuantizeConfig(QuantizingConfig):
    name: str = "prune_quantize"
    ratio: float = 0.1
