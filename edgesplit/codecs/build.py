"""Build each boundary's activation and gradient codecs from the `compressor` config."""
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate

from edgesplit.codecs import Codec, Entropy, ErrorFeedback
from edgesplit.codecs.sample_cache import CacheSpec
from edgesplit.boundary.meter import BOUNDARIES
from edgesplit.errors import ConfigError


@dataclass
class BoundaryCodecs:
    """What one boundary sends: activations forward, gradients backward."""
    activation: Codec
    gradient: Codec
    reuses_support: bool  # the gradient travels only at the positions the activation kept
    warmup_epochs: int = 0  # the first epochs send raw values

    @property
    def needs_ids(self) -> bool:
        """Whether a crossing needs its micro-batch's dataset indices (across hosts they travel)."""
        return any(c.random or c.per_sample for c in (self.activation, self.gradient))


# per-sample state has a row per training sample: edgesplit.assemble counts them from the dataset
NO_SAMPLES = "per-sample state needs the training set's size (num_samples), which is not given"


def _codec(spec: Any, key: str, cache: Optional[CacheSpec]) -> Codec:
    try:
        target = get_class(spec["_target_"])
        kwargs = {"cache": cache} if getattr(target, "per_sample", False) else {}
        if kwargs and cache is None:
            raise ValueError(NO_SAMPLES)
        codec = instantiate(spec, **kwargs)
    except (InstantiationException, ValueError, TypeError, ImportError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}: cannot build the codec: {reason}") from None
    if not isinstance(codec, Codec):
        raise ConfigError(f"{key}: _target_ must build an edgesplit.codecs.Codec, got {type(codec).__name__}")
    return codec


def build_codecs(cfg: Mapping[str, Any], num_samples: Optional[int] = None) -> Dict[str, BoundaryCodecs]:
    """Codecs of the 'front' and 'back' boundaries of the `compressor` config `cfg`;
    `compressor.front`/`.back` override the defaults. Each call builds new codec objects
    (per-sample state is each end's own, `num_samples` rows: the training set's size). With
    `compressor.entropy` zlib or zstd each codec is wrapped in an Entropy stage, outermost."""
    cache = (CacheSpec(int(num_samples), cfg["cache_dtype"], cfg.get("cache_dir"))
             if num_samples is not None else None)
    entropy = cfg.get("entropy", "none")
    out = {}
    for boundary in BOUNDARIES:
        override = cfg.get(boundary) or {}
        specs = {}
        for role in ("activation", "gradient"):
            key = f"compressor.{boundary}.{role}" if role in override else f"compressor.{role}"
            specs[role] = _codec(override[role] if role in override else cfg[role], key, cache)
        if cfg["error_feedback"]:
            if cache is None:
                raise ConfigError(f"compressor.error_feedback: {NO_SAMPLES}")
            specs["activation"] = ErrorFeedback(specs["activation"], cache)
        if entropy != "none":
            specs = {role: Entropy(codec, entropy) for role, codec in specs.items()}
        out[boundary] = BoundaryCodecs(specs["activation"], specs["gradient"],
                                       cfg["gradient_reuses_support"], cfg["warmup_epochs"])
    return out
