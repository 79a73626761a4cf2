"""Peak memory estimates of a side: its parameters, their gradients, the optimizer's state, and the
activations its partitions keep for the backward under the checkpoint policy (an estimate: the
allocator, the payload buffers and the framework's own memory are not counted)."""
from dataclasses import dataclass
from typing import Any, List, Mapping

from edgesplit.plan.step_model import Schedule


@dataclass(frozen=True)
class PartMemory:
    """One partition per micro-batch: its parameters' bytes, what autograd saves in its forward, its
    input's bytes (all a recomputed micro-batch keeps), and the most its forward and backward adds
    while it runs (from its units' measured train_peak_bytes; 0: not measured)."""
    param_bytes: int
    saved_bytes: int
    input_bytes: int
    transient_bytes: int = 0


def optimizer_state_factor(optimizer: Mapping[str, Any]) -> int:
    """Buffers per parameter of the optimizer config (its `_target_` and keys): Adam's two moments,
    SGD's momentum buffer (none without momentum)."""
    target = str(optimizer.get("_target_", "")).rsplit(".", 1)[-1].lower()
    if target.startswith("adam"):
        return 2
    if target == "sgd":
        return 1 if float(optimizer.get("momentum") or 0.0) > 0 else 0
    return 1  # an unknown optimizer: assume one buffer


def in_flight(sched: Schedule, later: int) -> int:
    """Micro-batches whose activations a stage with `later` stages after it holds at once."""
    return sched.chunks if sched.order == "gpipe" else min(sched.chunks, later + 1)


def _kept(part: PartMemory, sched: Schedule, later: int) -> List[int]:
    """What each micro-batch in flight keeps between its forward and backward: its saved tensors, or
    only its input where it is recomputed."""
    return [part.input_bytes if sched.recomputes(i) else part.saved_bytes
            for i in range(in_flight(sched, later))]


def activation_bytes(part: PartMemory, sched: Schedule, later: int) -> int:
    """Activations kept at the peak without a measured transient: each micro-batch's kept tensors, and
    one recomputation brings a micro-batch's saved tensors back."""
    kept = _kept(part, sched, later)
    recomputed = any(sched.recomputes(i) for i in range(len(kept)))
    return sum(kept) + (part.saved_bytes if recomputed else 0)


def side_peak_bytes(parts: Mapping[int, PartMemory], sched: Schedule, state_factor: int) -> int:
    """A side's estimate over its partitions (by the number of stages after each): parameters, their
    gradients and `state_factor` optimizer buffers each, and the activations at the peak. With the
    partitions' measured transients (one partition computes at a time on a side): every micro-batch's
    kept tensors, the one in its backward replaced by the largest partition transient."""
    params = sum(p.param_bytes * (2 + state_factor) for p in parts.values())
    if not all(p.transient_bytes for p in parts.values()):  # a profile from before transients
        return params + sum(activation_bytes(p, sched, later) for later, p in parts.items())
    kept = {later: _kept(p, sched, later) for later, p in parts.items()}
    return params + sum(sum(k) for k in kept.values()) + max(
        p.transient_bytes - max(kept[later]) for later, p in parts.items())
