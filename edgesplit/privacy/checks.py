"""Range checks of the `privacy` group's measurement keys (validate.py calls them)."""
from omegaconf import DictConfig

from edgesplit.errors import ConfigError


def validate_measurement(p: DictConfig) -> None:
    """The measurement keys' ranges; ConfigError naming the key and what is allowed."""
    checks = [("batches", p.batches >= 1, "must be >= 1 (train batches each attack reads, per epoch)"),
              ("aux_fraction", 0 < p.aux_fraction < 1, "must be in (0, 1) (the rest is scored)"),
              ("scored", p.scored >= 4, "must be >= 4 (distance correlation needs 4 samples)"),
              ("decoder_steps", p.decoder_steps >= 1, "must be >= 1")]
    for key, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"privacy.{key}={p[key]!r} is invalid: {allowed}")
