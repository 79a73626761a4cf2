"""The training loop: epochs of train steps and evaluation, logging, checkpoints, resume."""
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from edgesplit.assemble import assemble, derived_config
from edgesplit.run import best, checkpoint, interrupt, memory
from edgesplit.backends import Backend, StepResult, build_backend
from edgesplit.boundary.meter import CommMeter
from edgesplit.clients.dist import build_clients
from edgesplit.validate import validate
from edgesplit.data.datasets import Datasets, build_loader
from edgesplit.errors import RunInterrupted, TrainingDiverged, UserError
from edgesplit.logs.logbook import Logbook, public_config, redact
from edgesplit.data.resident import ResidentImages, ResidentLoader
from edgesplit.run.resume import check_config, check_fits, load_state
from edgesplit.privacy.probe import build_probe
from edgesplit.logs.summary import EpochRecord, RunSummary, read_summary, write_summary
from edgesplit.run.rundir import RunDirLock
from edgesplit.run.steptimes import Pace, RunStepTimes, epoch_median

log = logging.getLogger(__name__)


def _percent(hits: int, count: int) -> float:
    return 100.0 * hits / max(count, 1)


def train_epoch(backend: Backend, loader: Any, epoch: int, cfg: DictConfig, logbook: Logbook,
                last_good: str, run_times: RunStepTimes) -> Dict[str, float]:
    backend.train(True)
    total = StepResult(0.0, 0, 0, 0)
    step_times: List[float] = []
    counted: List[bool] = []  # False: the warm-up step after start or resume
    # a bar on a terminal; plain log lines when the output is a file: after the first step, then
    # every `log_every` steps, with the pace since the line before
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}", leave=False,
               dynamic_ncols=True, mininterval=1.0, disable=None)
    pace = Pace()
    data_s, fetched = 0.0, time.perf_counter()  # the time spent waiting for batches
    for step, (x, y, ids) in enumerate(bar):
        interrupt.check()
        tic = time.perf_counter()
        data_s += tic - fetched
        try:
            result = backend.train_step(x, y, ids)
        except TrainingDiverged as e:  # a boundary's: where the run was and what is kept
            raise TrainingDiverged(f"{e} at epoch {epoch + 1} step {step + 1}; {last_good}") from None
        if not result.count:  # a dropped client's turn (many edges in dist): no step ran
            fetched = time.perf_counter()
            continue
        loss = result.loss_sum / result.count
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss} at epoch {epoch + 1} step {step + 1} "
                                   f"(schedule.lr={cfg.schedule.lr}); {last_good}")
        step_times.append(time.perf_counter() - tic)
        counted.append(run_times.add(step_times[-1]))
        pace.step(result.count)
        total = total + result
        global_step = epoch * len(loader) + step
        logbook.scalars({"train/step_loss": loss}, global_step)
        acc1 = _percent(result.correct1, result.count)
        bar.set_postfix(loss=f"{loss:.3f}", acc1=f"{acc1:.1f}", s_per_step=f"{step_times[-1]:.2f}")
        if bar.disable and (step == 0 or (step + 1) % cfg.log_every == 0):
            log.info(f"epoch {epoch + 1} step {step + 1}/{len(loader)} loss {loss:.4f} "
                     f"acc1 {acc1:.2f} | {pace.line()}")
        fetched = time.perf_counter()
    if not step_times:
        raise UserError(f"no training batch: data.batch_size={cfg.data.batch_size} exceeds the "
                        f"training set ({len(loader.dataset)} samples) and the last partial batch is dropped")
    return {
        "train_loss": total.loss_sum / total.count,
        "train_acc1": _percent(total.correct1, total.count),
        "time_per_batch_s": epoch_median(step_times, counted),
        "data_s": data_s,
        "skipped_steps": total.skipped,
    }


@torch.no_grad()
def evaluate(backend: Backend, loader: Any) -> Dict[str, float]:
    backend.train(False)
    total = StepResult(0.0, 0, 0, 0)
    for x, y in loader:
        interrupt.check()
        total = total + backend.eval_step(x, y)
    return {
        "val_loss": total.loss_sum / max(total.count, 1),
        "val_acc1": _percent(total.correct1, total.count),
        "val_acc5": _percent(total.correct5, total.count),
    }


def _resumed_summary(state: Dict[str, Any], cfg: DictConfig, changes: List[str]) -> RunSummary:
    """The checkpoint's summary (the source of truth: summary.json may lag it by a kill), running on."""
    summary = RunSummary.from_dict(state["summary"])
    summary.status, summary.error = "running", None
    summary.backend, summary.epochs_planned = cfg.pipeline_backend.name, cfg.schedule.epochs
    summary.precision, summary.chunks = cfg.precision, cfg.pipeline_backend.chunks
    summary.resumed_with_changes = sorted({*summary.resumed_with_changes, *changes})
    return summary


def _repair_summary(run_dir: Path, summary: RunSummary) -> None:
    """Rewrite summary.json where it is not the checkpoint's (a kill between the two writes)."""
    try:
        on_disk = read_summary(run_dir)
    except ValueError:  # not JSON, or no run summary
        on_disk = None
    if on_disk is None or on_disk.to_dict() != summary.to_dict():
        write_summary(run_dir, summary)
        log.info(f"{run_dir / 'summary.json'} rewritten from the checkpoint's summary")


def _kept(ckpt: Path, epochs: int) -> str:
    if not epochs:
        return "no checkpoint was written yet"
    return f"the last good checkpoint ({ckpt}, epoch {epochs}) is kept"


def _write_on_the_way_out(run_dir: Path, summary: RunSummary) -> None:
    """The summary of a run that stops: a write that fails too (a full disk) must not hide why."""
    try:
        write_summary(run_dir, summary)
    except UserError as e:
        log.warning(f"{e}")


def _saved_config(cfg: DictConfig, derived: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The resolved config a checkpoint keeps, with the keys the data decided (`derived`, dotted:
    edgesplit.assemble.derived_config), without the dist link's secret (a checkpoint may be handed
    to others; resuming does not compare the secret)."""
    config = public_config(cfg)
    for key, value in (derived or {}).items():
        group, name = key.split(".")
        config[group][name] = value
    return config


def _load_avg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # not on every platform
        return None


def _cpus() -> Optional[int]:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run(cfg: DictConfig, run_dir: Path, overrides: List[str]) -> Dict[str, Any]:
    """Train as `cfg` says, writing tb/, summary.json and checkpoint.pt into run_dir (locked meanwhile)."""
    validate(cfg)
    overrides = redact(overrides)  # every record of the run keeps them: never the secret
    with RunDirLock(run_dir) as lock, interrupt.stop_at_step_boundaries():
        memory.start_job()  # this job's peak, also after other jobs of a sweep in this process
        try:
            return _run_locked(cfg, run_dir, overrides, lock)
        finally:
            memory.stop_job()


def train_loader(cfg: DictConfig, datasets: Datasets, resident: Optional[ResidentImages],
                 epoch: int) -> Any:
    """An epoch's training batches (x, y, dataset indices): the CPU loader, or batches of the set
    kept on data.device (`resident`, from Datasets.resident_train)."""
    fixed = cfg.data.get("augment") == "fixed"
    if resident is None:
        return build_loader(datasets.train, cfg.data.batch_size, train=True, seed=cfg.seed,
                            epoch=epoch, num_workers=cfg.data.num_workers, fixed_augment=fixed)
    return ResidentLoader(resident, cfg.data.batch_size, seed=cfg.seed, epoch=epoch,
                          fixed_augment=fixed, channels_last=cfg.channels_last)


def val_loader(cfg: DictConfig, datasets: Datasets) -> Any:
    return build_loader(datasets.val, cfg.data.eval_batch_size or cfg.data.batch_size, train=False,
                        seed=cfg.seed, epoch=0, num_workers=cfg.data.num_workers)


def _run_locked(cfg: DictConfig, run_dir: Path, overrides: List[str], lock: RunDirLock) -> Dict[str, Any]:
    log.debug(f"the resolved config (without the secret):\n{OmegaConf.to_yaml(public_config(cfg))}")
    state = load_state(cfg, run_dir)
    weights = best.read_weights(Path(cfg.init_from)) if cfg.init_from and state is None else None
    parts = assemble(cfg)
    datasets, split, facts = parts.datasets, parts.split, parts.spec.facts
    derived = derived_config(parts.spec)  # what the data decided, as the checkpoint keeps it
    assert datasets is not None  # assembled from the config's data
    ckpt = run_dir / checkpoint.NAME
    summary = RunSummary(backend=cfg.pipeline_backend.name, epochs_planned=cfg.schedule.epochs,
                         eval_compressed=cfg.compressor.eval_compressed, overrides=overrides,
                         precision=cfg.precision, chunks=cfg.pipeline_backend.chunks)
    if state is not None:
        changes = check_config(cfg, state, ckpt, derived)
        check_fits(state, ckpt, split.units, cfg, derived)  # before anything is restored from it
        summary = _resumed_summary(state, cfg, changes)
        if state["epoch"] >= cfg.schedule.epochs:
            summary.status = "finished"
            _repair_summary(run_dir, summary)
            log.info(f"{run_dir} finished all {state['epoch']} epochs already: nothing to resume")
            return summary.to_dict()
    summary.load_avg_start, summary.cpus = _load_avg(), _cpus()
    run_times = RunStepTimes((state or {}).get("step_times", {}).get(checkpoint.EDGE_PROCESS))
    meter = CommMeter()
    backend: Optional[Backend] = None
    logbook: Optional[Logbook] = None
    try:  # a peer that fails while the backend starts (dist) ends the run as any failure does
        # many edges (clients.count > 1): the clients' pipelines of the configured backend
        clients = build_clients(parts, meter) if parts.clients is not None else None
        backend = clients or build_backend(parts, meter)
        logbook = Logbook(run_dir, cfg, overrides)  # logger=mlflow's store opens here
        start = 0
        if state is not None:
            backend.load_state_dict(state)
            start = state["epoch"]
        elif weights is not None:
            best.load_weights(backend, weights)
        validation = val_loader(cfg, datasets)
        # data.device: the training set kept on that device (resident.py), or the CPU loader
        resident = None if cfg.data.device == "cpu" else datasets.resident_train(cfg.data.device)
        probe = build_probe(parts.privacy, backend, list(split.edge_front), datasets.val, cfg.seed, run_dir)
        log.info(f"{cfg.pipeline_backend.name}: edge units {split.edge_indices}, cloud stages "
                 f"{[list(split.cloud_range(s)) for s in range(cfg.partition.cloud_stages)]}, "
                 f"{facts.train_size} train / {facts.val_size} val samples, run dir {run_dir}")
        for epoch in range(start, cfg.schedule.epochs):
            interrupt.check()
            torch.manual_seed(cfg.seed + epoch)
            last_good = _kept(ckpt, epoch)
            meter.reset()
            backend.start_epoch(epoch)
            lr = backend.lr
            loader = clients.batches(epoch) if clients else train_loader(cfg, datasets, resident, epoch)
            loader = loader if probe is None else probe.watch(loader)
            metrics = train_epoch(backend, loader, epoch, cfg, logbook, last_good, run_times)
            try:
                metrics.update(evaluate(backend, validation))
            except TrainingDiverged as e:
                raise TrainingDiverged(f"{e} in the evaluation after epoch {epoch + 1} "
                                       f"(schedule.lr={cfg.schedule.lr}); {last_good}") from None
            for key in ("val_loss", "val_acc1"):
                if not math.isfinite(metrics[key]):
                    raise TrainingDiverged(f"{key} is {metrics[key]} after epoch {epoch + 1} "
                                           f"(schedule.lr={cfg.schedule.lr}); {last_good}")
            record = EpochRecord.from_dict({"epoch": epoch + 1, "lr": lr, **metrics})
            record.privacy = {} if probe is None else probe.figures(epoch)
            sides = backend.side_stats()
            comm = meter.summary()  # after side_stats: it merges the figures of other processes
            summary.record_epoch(record, cfg.data.batch_size, comm, sides,
                                 time_per_batch_s=run_times.median())
            if clients is not None:
                summary.record_clients(clients.header(), clients.epoch_figures(epoch + 1))
            summary.load_avg_end = _load_avg()
            step_times = {checkpoint.EDGE_PROCESS: run_times.histogram.state_dict()}
            # the config without the dist link's secret: a checkpoint may be handed to others
            checkpoint.atomic_save({**backend.state_dict(), "format": checkpoint.FORMAT, "epoch": epoch + 1,
                                    "summary": summary.to_dict(), "config": _saved_config(cfg, derived),
                                    "step_times": step_times}, ckpt, *best.best_copies(summary, run_dir, cfg))
            write_summary(run_dir, summary)
            lock.refresh()
            logbook.record_epoch(summary)
            log.info(f"epoch {epoch + 1}/{cfg.schedule.epochs} lr {lr:.4g} "
                     f"train loss {metrics['train_loss']:.4f} acc1 {metrics['train_acc1']:.2f} | "
                     f"val loss {metrics['val_loss']:.4f} acc1 {metrics['val_acc1']:.2f} | "
                     f"{metrics['time_per_batch_s']:.3f} s/batch (run median "
                     f"{summary.time_per_batch_s:.3f}), data {metrics['data_s']:.2f} s | up "
                     f"{comm.up_bytes_per_batch:.0f} down {comm.down_bytes_per_batch:.0f} B/batch"
                     + (f" | {metrics['skipped_steps']} step(s) skipped by the fp16 loss scaler"
                        if metrics["skipped_steps"] else ""))
    except UserError as e:
        summary.fail(str(e))
        _write_on_the_way_out(run_dir, summary)
        raise
    except KeyboardInterrupt:
        message = (f"interrupted in epoch {summary.epochs + 1}/{cfg.schedule.epochs}; "
                   f"{_kept(ckpt, summary.epochs)}")
        summary.interrupt(message)
        _write_on_the_way_out(run_dir, summary)
        raise RunInterrupted(message) from None
    finally:
        if logbook is not None:
            logbook.close(summary.status)
        if backend is not None:
            backend.close()
        log.info(best.end_line(summary, run_dir, cfg))
    return summary.to_dict()
