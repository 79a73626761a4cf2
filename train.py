"""Train a network split between the edge and the cloud: `python train.py [overrides]`, `-m` for sweeps."""
import logging
import sys
from typing import List
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from edgesplit.config import register_configs
from edgesplit.errors import UserError
from edgesplit.trainer import run

log = logging.getLogger("edgesplit")
register_configs()
failed_jobs: List[List[str]] = []


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    try:
        if cfg.pipeline_backend.name == "dist" and cfg.pipeline_backend.get("role") == "cloud":
            from edgesplit.backends.remote import run_cloud  # serves the edge; writes no run dir
            return run_cloud(cfg, hydra_cfg.runtime.output_dir)
        run(cfg, Path(hydra_cfg.runtime.output_dir), overrides)
    except UserError as e:
        # One line, no traceback; in a sweep the other jobs go on (the exit code says it failed).
        log.error(f"error: {e}")
        failed_jobs.append(overrides)


if __name__ == "__main__":
    main()
    if failed_jobs:
        if len(failed_jobs) > 1 or "-m" in sys.argv or "--multirun" in sys.argv:
            log.error(f"{len(failed_jobs)} job(s) failed: {failed_jobs}")
        sys.exit(1)
