"""Train a network split between the edge and the cloud: `python train.py [overrides]`, `-m` for sweeps."""
import logging
import math
import sys
from typing import List
from pathlib import Path

import hydra
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from edgesplit.config import register_configs
from edgesplit.errors import ConfigError, UserError
from edgesplit.trainer import run

log = logging.getLogger("edgesplit")
register_configs()
failed_jobs: List[List[str]] = []
SIGINT_EXIT = 130  # the shell's code for a run ended by Ctrl-C


def check_single_run_is_no_sweep(hydra_cfg: HydraConf) -> None:
    """A sweep preset (hydra.sweeper.params) run without -m would train one default job silently;
    one whose swept keys are all given on the command line is one job (as with -m) and runs."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task}
    params = {k: v for k, v in (hydra_cfg.sweeper.get("params") or {}).items() if k not in given}
    if hydra_cfg.mode == RunMode.MULTIRUN or not params:
        return
    jobs = math.prod(len(str(v).split(",")) for v in params.values())
    preset = hydra_cfg.runtime.choices.get("experiment") or "this config"
    raise ConfigError(f"experiment={preset} is a sweep of {jobs} jobs over {', '.join(params)}: "
                      f"add -m to run it (python train.py -m experiment={preset} ...)")


def resume_hint(hydra_cfg: HydraConf, overrides: List[str]) -> str:
    kept = [o for o in overrides if not o.startswith("resume=")]
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"to continue, run the sweep again with resume=true hydra.sweep.dir={hydra_cfg.sweep.dir}"
    return (f"to continue: python train.py {' '.join(kept)} resume=true "
            f"hydra.run.dir={hydra_cfg.runtime.output_dir}").replace("  ", " ")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    try:
        check_single_run_is_no_sweep(hydra_cfg)
        if cfg.pipeline_backend.name == "dist" and cfg.pipeline_backend.get("role") == "cloud":
            from edgesplit.backends.remote import run_cloud  # serves the edge; writes no results
            return run_cloud(cfg)
        run(cfg, Path(hydra_cfg.runtime.output_dir), overrides)
    except UserError as e:
        # One line, no traceback; in a sweep the other jobs go on (the exit code says it failed).
        log.error(f"error: {e}")
        failed_jobs.append(overrides)
    except KeyboardInterrupt as e:
        # Ctrl-C stops the whole sweep: the process ends after Hydra's job clean-up.
        log.error(f"error: {e or 'interrupted'}; {resume_hint(hydra_cfg, overrides)}")
        raise


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(SIGINT_EXIT)
    if failed_jobs:
        if len(failed_jobs) > 1 or "-m" in sys.argv or "--multirun" in sys.argv:
            log.error(f"{len(failed_jobs)} job(s) failed: {failed_jobs}")
        sys.exit(1)
