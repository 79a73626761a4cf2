"""The backend's own cost on this host, fitted from reference runs: how much slower each
side computes inside the backend than its units alone, its fixed seconds per task and per step, and the
edge process's memory the unit profile does not see (data only: stored in the profile's JSON)."""
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

# The in-backend factor is clamped: a reference pair that barely differs must not fit a wild slope.
SCALE_RANGE = (0.5, 4.0)


@dataclass(frozen=True)
class SideCost:
    """One side inside the backend: compute = `scale` x the profiled compute + `task_s` per task
    (a micro-batch's forward or backward of one partition: its stage runner, message sealing and
    socket hand-off, the loss)."""
    scale: float = 1.0
    task_s: float = 0.0

    def seconds(self, profiled_s: float) -> float:
        return self.scale * profiled_s + self.task_s


@dataclass(frozen=True)
class Calibration:
    """The backend's cost at one schedule (chunks, order, checkpoint): the edge's and each cloud
    stage's SideCost, the seconds per step outside the tasks (optimizer steps, zeroing, the batch's
    split and the loss's mean), and the edge's memory as `edge_memory_scale` x the estimate +
    `edge_memory_bytes` (what the estimate misses: the allocator's rounding and arenas, the transport's
    buffers). The identity (no calibration) changes nothing."""
    edge: SideCost = SideCost()
    cloud: SideCost = SideCost()
    step_s: float = 0.0
    edge_memory_bytes: int = 0
    edge_memory_scale: float = 1.0

    def edge_memory(self, estimate: int) -> int:
        return int(self.edge_memory_scale * estimate) + self.edge_memory_bytes

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "Calibration":
        return Calibration(SideCost(float(data["edge"]["scale"]), float(data["edge"]["task_s"])),
                           SideCost(float(data["cloud"]["scale"]), float(data["cloud"]["task_s"])),
                           float(data["step_s"]), int(data["edge_memory_bytes"]),
                           float(data["edge_memory_scale"]))


def schedule_key(chunks: int, order: str, checkpoint: str) -> str:
    """A calibration's entry in a profile: the backend's tasks per step follow the schedule."""
    return f"chunks={chunks} order={order} checkpoint={checkpoint}"


def pooled_slope(groups: Sequence[Tuple[Sequence[float], Sequence[float]]]) -> Optional[float]:
    """The least-squares slope shared by groups of (x, y) points, each group with its own intercept
    (clamped to SCALE_RANGE); None where no group's x vary (by 5 % of their largest)."""
    num = den = 0.0
    for xs, ys in groups:
        if max(xs) - min(xs) < 0.05 * max(max(xs), 1e-12):
            continue
        x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
        num += sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys))
        den += sum((x - x_mean) ** 2 for x in xs)
    return min(max(num / den, SCALE_RANGE[0]), SCALE_RANGE[1]) if den else None


def fit_sides(profiled: Mapping[str, Sequence[float]], measured: Mapping[str, Sequence[float]],
              tasks: Mapping[str, int]) -> Dict[str, SideCost]:
    """Each side's SideCost through the references' (profiled, measured) compute per step. The edge,
    whose share differs most between the references: the least-squares slope and its intercept shared
    out over its `tasks` per step (not below 0). The cloud (and an edge whose references profile
    alike): the ratio of the means alone (a cloud's share barely varies: a slope would be noise)."""
    out = {}
    for side, xs in profiled.items():
        ys = measured[side]
        scale = pooled_slope([(xs, ys)]) if side == "edge" else None
        if scale is None:
            out[side] = SideCost(min(max(sum(ys) / max(sum(xs), 1e-12), SCALE_RANGE[0]), SCALE_RANGE[1]))
            continue
        rest = (sum(ys) - scale * sum(xs)) / len(xs)
        out[side] = SideCost(scale, max(rest, 0.0) / tasks[side])
    return out


def mean_rest(pairs: Sequence[Tuple[float, float]]) -> float:
    """The mean of measured - predicted over (predicted, measured) pairs."""
    return sum(m - p for p, m in pairs) / len(pairs)
