"""Train a network split between the edge and the cloud: `python train.py [overrides]`, `-m` for sweeps."""
import logging
import sys
from typing import List, cast
from pathlib import Path

import hydra
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from edgesplit.clients.schema import serving_role
from edgesplit.run import launchers
from edgesplit.run.command_line import check_argv
from edgesplit.config import register_configs
from edgesplit.errors import ConfigError, UserError
from edgesplit.logs.logbook import redact
from edgesplit.run.job_config import job_config
from edgesplit.run.guard import refuse
from edgesplit.run.trainer import run
from edgesplit.validate import validate_client, validate_dist

log = logging.getLogger("edgesplit")
register_configs()
SIGINT_EXIT = 130  # the shell's code for a run ended by Ctrl-C


def sweep_resume_hint(sweep_dir: object) -> str:
    return f"to continue, run the sweep again with resume=true hydra.sweep.dir={sweep_dir}"


def resume_hint(hydra_cfg: HydraConf, overrides: List[str]) -> str:
    kept = [o for o in overrides if not o.startswith("resume=")]
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return sweep_resume_hint(hydra_cfg.sweep.dir)
    return (f"to continue: python train.py {' '.join(kept)} resume=true "
            f"hydra.run.dir={hydra_cfg.runtime.output_dir}").replace("  ", " ")


def with_job_threads(cfg: DictConfig, hydra_cfg: HydraConf) -> DictConfig:
    """The job's config: a job of a parallel launcher with `threads` null takes its share of the
    CPUs, not all of them (a new config; Hydra's is not written to)."""
    if cfg.threads is not None:
        return cfg
    threads = launchers.job_threads(hydra_cfg.launcher, launchers.available_cpus())
    if threads is None:
        return cfg
    log.info(f"threads={threads} torch threads for this job "
             f"({launchers.launcher_kind(hydra_cfg.launcher)} launcher; set threads to change)")
    return cast(DictConfig, OmegaConf.merge(cfg, {"threads": threads}))


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = redact(list(hydra_cfg.overrides.task))  # they reach logs and records: no secret
    if launchers.sweep_interrupted():  # Ctrl-C stopped the sweep: a queued job does not start
        log.warning("not started: the sweep was interrupted")
        return
    with launchers.job_process():
        try:
            cfg, note = job_config(cfg, hydra_cfg)
            if note:
                log.info(note)
            cfg = with_job_threads(cfg, hydra_cfg)
            role = serving_role(cfg)  # a process that serves another's run and writes no results
            if role is not None:
                validate_dist(cfg.pipeline_backend)  # the rest of its config is the other's to check
                if role == "cloud":  # a cloud host of one edge
                    from edgesplit.backends.remote import run_cloud
                    return run_cloud(cfg)
                from edgesplit.clients.hosts import run_edge_host  # a client's edge host of many
                validate_client(cfg)
                return run_edge_host(cfg)
            run(cfg, Path(hydra_cfg.runtime.output_dir), overrides)
        except UserError as e:
            # One line, no traceback; in a sweep the other jobs go on (the exit code says it failed).
            log.error(f"error: {e}")
            num = int(hydra_cfg.job.num) if hydra_cfg.mode == RunMode.MULTIRUN else 0
            launchers.record_failure(overrides, str(e), num)
        except KeyboardInterrupt as e:
            log.error(f"error: {e or 'interrupted'}; {resume_hint(hydra_cfg, overrides)}")
            if launchers.in_job_process():
                # a job process of a parallel launcher returns: the launcher lets the other running
                # jobs stop by themselves (an exception would kill them), starts no other, and the
                # launching process exits 130
                launchers.record_interrupt()
                return
            # Ctrl-C stops the whole sweep: the process ends after Hydra's job clean-up.
            raise


if __name__ == "__main__":
    try:  # a misspelled key or option, a group given twice: one line, before Hydra's own message
        check_argv(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    except ConfigError as e:
        refuse(str(e))
    interrupted = False
    try:
        main()
    except KeyboardInterrupt:
        interrupted = True
    outcome = launchers.collect()  # what the jobs left, also those run by a launcher in other processes
    if interrupted:
        sys.exit(SIGINT_EXIT)
    if outcome.interrupted:
        log.error(f"error: the sweep was interrupted; {sweep_resume_hint(outcome.sweep_dir)}")
        sys.exit(SIGINT_EXIT)
    if outcome.failed:
        if len(outcome.failed) > 1 or "-m" in sys.argv or "--multirun" in sys.argv:
            log.error(f"{len(outcome.failed)} job(s) failed: {outcome.failed}")
        sys.exit(1)
