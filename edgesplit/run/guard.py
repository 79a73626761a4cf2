"""Hydra callback that runs before Hydra writes anything into the run dir: a secret on the command
line is refused (Hydra would write it to .hydra/), a single run's config that validation refuses
(nothing is written for it), a run dir that a live run holds (Hydra would rewrite its .hydra/ files
and append to its train.log), a sweep with such a dir below its sweep dir, and a sweep that launches
no job."""
import datetime
import os
import sys
from pathlib import Path
from typing import Any, List, NoReturn, Optional

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from edgesplit.clients.schema import serving_role
from edgesplit.errors import UserError
from edgesplit.run.job_config import job_config, task_config
from edgesplit.run.rundir import check_free, check_sweep_free

SECRET_KEYS = ("pipeline_backend.secret",)


def secret_given(overrides: Any) -> bool:
    """Whether a command-line override sets the dist link's secret."""
    return any(str(o).lstrip("+~").split("=", 1)[0] in SECRET_KEYS for o in overrides)


def empty_sweep(overrides: List[str]) -> Optional[str]:
    """The refusal of the first sweep in `overrides` (a range, a choice list, a config group's glob)
    that yields no value, by name; None where each yields one (Hydra would launch 0 jobs, exit 0)."""
    hydra = GlobalHydra.instance()
    loader = hydra.config_loader() if hydra.is_initialized() else None
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
    except OverrideParseException:  # a sweeper's own syntax: it reports its own errors
        return None
    for override in parsed:
        if override.is_discrete_sweep() and next(override.sweep_string_iterator(), None) is None:
            key = override.get_key_element()
            if loader is not None and override.value_type == ValueType.GLOB_CHOICE_SWEEP:
                found = loader.get_group_options(key)
                return (f"{override.input_line} matches no option of {key} (its options: "
                        f"{', '.join(found)}): the sweep would launch no job")
            return f"{override.input_line} sweeps no value: the sweep would launch no job"
    return None


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
        try:  # the job checks again, with its log; a sweep's jobs each check in their own dir
            job_config(task_config(config), config.hydra)
        except UserError as e:
            _refuse(str(e))
        run_dir = Path(str(config.hydra.run.dir))
        try:
            check_free(run_dir)
        except UserError as e:
            role = serving_role(config)
            if role is None:
                _refuse(str(e))
            # A cloud role (an edge host of many edges) writes no results, only Hydra's own files:
            # given the live dir of the run it serves (both started in the same second on one host),
            # they go beside it, not over its record.
            with read_write(config.hydra):
                config.hydra.run.dir = f"{run_dir}-{role}-{os.getpid()}"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check_secret(config)
        # Hydra (1.3, run_job) writes a job's train.log and .hydra/ before any callback hears of the
        # job (on_job_start comes after), so the sweep is checked before it starts: a live run in a
        # dir below its sweep dir, where every job's dir lies, refuses the whole sweep.
        try:
            check_sweep_free(Path(str(config.hydra.sweep.dir)))
        except UserError as e:
            _refuse(str(e))
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        refusal = empty_sweep([*params, *config.hydra.overrides.task])
        if refusal is not None:
            _refuse(refusal)
