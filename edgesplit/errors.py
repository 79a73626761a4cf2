"""Errors a user can act on: each carries a one-line message naming the key or path and the way out."""


class UserError(Exception):
    """A problem with the input or the environment, reported as one line and a non-zero exit."""


class ConfigError(UserError):
    """A config value out of range or of an unknown name."""


class DataError(UserError):
    """A dataset that is missing, corrupt or cannot be downloaded."""


class TrainingDiverged(UserError):
    """A NaN or inf appeared in a training step; the last good checkpoint is kept."""


class PeerError(UserError):
    """A process of the dist backend died, timed out or never connected."""
