"""Errors a user can act on: each carries a one-line message naming the key or path and the way out."""
import errno
import shutil
from pathlib import Path


class UserError(Exception):
    """A problem with the input or the environment, reported as one line and a non-zero exit."""


class ConfigError(UserError):
    """A config value out of range or of an unknown name."""


class DataError(UserError):
    """A dataset that is missing, corrupt or cannot be downloaded."""


class TrainingDiverged(UserError):
    """A NaN or inf appeared in a train step or an evaluation; the last good checkpoint is kept."""


class PeerError(UserError):
    """A process of the dist backend died, timed out or never connected."""


class RunDirBusy(UserError):
    """The run dir is locked by another live run."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run: the summary says `interrupted`, the last checkpoint is kept."""


def write_failed(path: Path, exc: OSError) -> UserError:
    """A failed file write as one line naming the path; a full disk says how much space is free."""
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(path.parent).free
        return UserError(f"no space left on the device writing {path} ({free / 2**20:.1f} MiB free "
                         f"there); the previous file is kept: free space, then resume=true")
    return UserError(f"cannot write {path}: {exc.strerror or exc}")
