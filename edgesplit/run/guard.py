"""Hydra callback that runs before Hydra writes anything into the run dir: a secret on the command
line is refused (Hydra would write it to .hydra/), and so is a run dir that a live run holds (Hydra
would rewrite its .hydra/ files and append to its train.log)."""
import datetime
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from edgesplit.errors import UserError
from edgesplit.run.rundir import check_free

SECRET_KEYS = ("pipeline_backend.secret",)


def secret_given(overrides: Any) -> bool:
    """Whether a command-line override sets the dist link's secret."""
    return any(str(o).lstrip("+~").split("=", 1)[0] in SECRET_KEYS for o in overrides)


def _refuse(message: str) -> NoReturn:
    # Hydra's logging is not set up yet (it would open train.log in the run dir): its line format
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    print(f"[{now}][edgesplit][ERROR] - error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


refuse = _refuse  # train.py's checks of its command line, before Hydra starts, print the same line


class RunGuard(Callback):
    """conf/config.yaml, hydra.callbacks."""

    def _check_secret(self, config: DictConfig) -> None:
        if secret_given(config.hydra.overrides.task):
            _refuse("pipeline_backend.secret on the command line would be written in clear to "
                    ".hydra/overrides.yaml and .hydra/config.yaml: set EDGESPLIT_SECRET or "
                    "pipeline_backend.secret_file=PATH (a file holding the secret) instead")

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check_secret(config)
        run_dir = Path(str(config.hydra.run.dir))
        try:
            check_free(run_dir)
        except UserError as e:
            if config.pipeline_backend.get("role") != "cloud":
                _refuse(str(e))
            # A cloud role writes no results, only Hydra's own files: given the edge's live dir
            # (both started in the same second on one host), they go beside it, not over its record.
            with read_write(config.hydra):
                config.hydra.run.dir = f"{run_dir}-cloud-{os.getpid()}"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check_secret(config)
