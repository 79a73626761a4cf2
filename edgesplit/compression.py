"""Build each boundary's activation and gradient codecs from the `compressor` config."""
from dataclasses import dataclass
from typing import Any, Dict

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from edgesplit.codecs import Codec, Entropy
from edgesplit.comm import BOUNDARIES
from edgesplit.errors import ConfigError


@dataclass
class BoundaryCodecs:
    """What one boundary sends: activations forward, gradients backward."""
    activation: Codec
    gradient: Codec
    reuses_support: bool  # the gradient travels only at the positions the activation kept


def _codec(spec: Any, key: str) -> Codec:
    try:
        codec = instantiate(spec)
    except (InstantiationException, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}: cannot build the codec: {reason}") from None
    if not isinstance(codec, Codec):
        raise ConfigError(f"{key}: _target_ must build an edgesplit.codecs.Codec, got {type(codec).__name__}")
    return codec


def build_codecs(cfg: DictConfig) -> Dict[str, BoundaryCodecs]:
    """Codecs of the 'front' and 'back' boundaries; `compressor.front`/`.back` override the defaults.
    With `compressor.entropy` zlib or zstd each codec is wrapped in an Entropy stage."""
    entropy = cfg.get("entropy", "none")
    out = {}
    for boundary in BOUNDARIES:
        override = cfg.get(boundary) or {}
        specs = {}
        for role in ("activation", "gradient"):
            key = f"compressor.{boundary}.{role}" if role in override else f"compressor.{role}"
            specs[role] = _codec(override[role] if role in override else cfg[role], key)
            if entropy != "none":
                specs[role] = Entropy(specs[role], entropy)
        out[boundary] = BoundaryCodecs(specs["activation"], specs["gradient"], cfg.gradient_reuses_support)
    return out
