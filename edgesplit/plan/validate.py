"""`plan.validate=K`: run K planned candidates on the dist backend (the emulated link and edge
slowdown) for `plan.validate_steps` training steps each, and set the measured step time, bytes per
step and edge memory beside the predictions."""
import itertools
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from edgesplit.backends import build_backend
from edgesplit.backends.base import Backend
from edgesplit.boundary.meter import CommMeter
from edgesplit.errors import ConfigError
from edgesplit.assemble import assemble
from edgesplit.plan.inputs import PlanInputs
from edgesplit.plan.schema import compose_plan
from edgesplit.plan.space import Candidate, Figures
from edgesplit.run import memory
from edgesplit.run.trainer import train_loader
from edgesplit.validate import validate

log = logging.getLogger("edgesplit")


@dataclass
class Measured:
    """One candidate's run: the median step, bytes per step each way, the edge's peak memory (its
    parameters plus the RSS growth over its steps: gradients, optimizer state, activations), and each
    side's compute per step as the backend counts it (the time blocked on the link not in it)."""
    step_s: float
    up_bytes: float
    down_bytes: float
    edge_peak_bytes: int
    edge_compute_s: float = 0.0
    cloud_compute_s: float = 0.0


def chosen(figures: Sequence[Figures], k: int) -> List[Figures]:
    """K of the ranked candidates: the top half of K, then the rest spread evenly over the ranking
    (all of them when K covers the space)."""
    if k >= len(figures):
        return list(figures)
    top = (k + 1) // 2
    rest, spread = len(figures) - top, k - top
    picks = sorted({top + round(i * (rest - 1) / max(spread - 1, 1)) for i in range(spread)})
    return [*figures[:top], *(figures[i] for i in picks)]


def check_validation(inputs: PlanInputs) -> None:
    """What a validation needs: the dist backend on this host, started here, at this host's speed."""
    b = inputs.cfg.pipeline_backend
    if b.name != "dist":
        raise ConfigError(f"plan.validate runs the candidates on pipeline_backend=dist (its emulated link "
                          f"and edge slowdown), not {b.name}")
    if b.get("role") is not None:
        raise ConfigError(f"plan.validate starts the cloud stages itself: drop pipeline_backend.role="
                          f"{b.role}")
    if inputs.devices.cloud_speedup != 1 or inputs.plan.profile is not None:
        raise ConfigError("plan.validate measures this host against this host's profile: the cloud cannot "
                          "run faster here; drop plan.cloud_speedup and plan.profile")
    if inputs.plan.validate_steps < 3:
        raise ConfigError(f"plan.validate_steps={inputs.plan.validate_steps} is invalid: must be >= 3 "
                          f"(the median of the timed steps)")


def _batches(cfg: Any, datasets: Any) -> Iterator[Any]:
    """Training batches over as many epochs as the steps take."""
    for epoch in itertools.count():
        yield from train_loader(cfg, datasets, None, epoch)


def _edge_param_bytes(backend: Backend) -> int:
    return sum(p.numel() * p.element_size() for u in backend.local_units().values() for p in u.parameters())


def measure(inputs: PlanInputs, c: Candidate, warmup: int, steps: int, extra: Sequence[str] = ()) -> Measured:
    """Run one candidate (the plan's config, then `extra` overrides): `warmup` untimed steps, then
    `steps` timed ones."""
    cfg, _ = compose_plan([*inputs.overrides, f"partition.front={c.front}", f"partition.back={c.back}",
                           f"compressor={c.compressor}", f"pipeline_backend.chunks={c.chunks}",
                           f"pipeline_backend.edge_slowdown={inputs.devices.edge_slowdown}", *extra])
    validate(cfg)
    parts = assemble(cfg)
    meter = CommMeter()
    backend = build_backend(parts, meter)
    try:
        backend.train(True)
        backend.start_epoch(0)
        batches = _batches(cfg, parts.datasets)
        for x, y, ids in itertools.islice(batches, warmup):
            backend.train_step(x, y, ids)
        backend.start_epoch(1)  # the cloud's meter counts from here too
        meter.reset()
        cpu = torch.device("cpu")
        base = memory.reset_peak(cpu)  # the warm steps' lasting buffers are in the baseline
        times = []
        for x, y, ids in itertools.islice(batches, steps):
            tic = time.perf_counter()
            result = backend.train_step(x, y, ids)
            times.append(time.perf_counter() - tic)
            if not math.isfinite(result.loss_sum):
                raise RuntimeError(f"the loss is {result.loss_sum}: lower schedule.lr")
        grown = memory.peak_since_reset(cpu) - base
        sides = backend.side_stats()  # merges the cloud's meter figures into this one
        comm = meter.summary()
        return Measured(statistics.median(times), comm.up_bytes_per_batch, comm.down_bytes_per_batch,
                        _edge_param_bytes(backend) + max(grown, 0) + _warm_state_bytes(backend),
                        sides["edge"].compute_s_per_batch, sides["cloud"].compute_s_per_batch)
    finally:
        backend.close()


def _warm_state_bytes(backend: Backend) -> int:
    """What the warm-up steps allocated that stays (each parameter's gradient and the optimizer's
    buffers): in the baseline RSS, so added back."""
    total = 0
    for unit in backend.local_units().values():
        for p in unit.parameters():
            if p.grad is not None:
                total += p.grad.numel() * p.grad.element_size()
    optimization = getattr(backend, "optimization", None)
    optimizer = getattr(optimization, "optimizer", None)
    for state in (optimizer.state.values() if optimizer is not None else []):
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim())
    return total


def rel_err(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured if measured else math.inf


@dataclass
class Row:
    rank: int  # the candidate's place in the plan's ranking (1 = predicted fastest)
    front: int
    back: int
    compressor: str
    chunks: int
    predicted: Dict[str, float]
    measured: Optional[Dict[str, float]]
    error: Optional[str] = None


def validate_plan(inputs: PlanInputs, figures: Sequence[Figures]) -> List[Row]:
    """Measure `plan.validate` of the ranked candidates, one line of progress each."""
    check_validation(inputs)
    picks = chosen(figures, int(inputs.plan.validate))
    rank = {id(f): i + 1 for i, f in enumerate(figures)}
    rows = []
    for n, f in enumerate(picks, 1):
        c = f.candidate
        predicted = {"step_s": f.step_s, "up_bytes": f.up_bytes, "down_bytes": f.down_bytes,
                     "edge_peak_bytes": f.edge_peak_bytes}
        row = Row(rank[id(f)], c.front, c.back, c.compressor, c.chunks, predicted, None)
        try:
            row.measured = asdict(measure(inputs, c, int(inputs.plan.validate_warmup),
                                          int(inputs.plan.validate_steps)))
        except ConfigError:
            raise
        except Exception as e:  # a candidate that fails is a row that says why, not a lost validation
            row.error = " ".join(f"{type(e).__name__}: {e}".split())
        rows.append(row)
        got = row.measured
        log.info(f"validated {n}/{len(picks)}: front {c.front}, back {c.back}, {c.compressor}, {c.chunks} "
                 f"chunks: " + (f"{got['step_s']:.4g} s/step measured, {f.step_s:.4g} predicted"
                                if got else f"failed: {row.error}"))
    return rows
