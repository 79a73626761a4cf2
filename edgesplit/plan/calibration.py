"""The backend's own cost on this host, fitted from reference runs: how much slower each
side computes inside the backend than its units alone, its fixed seconds per task and per step, and the
edge process's memory the unit profile does not see (data only: stored in the profile's JSON)."""
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple

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
    split and the loss's mean), and the edge's memory beyond the estimate (the framework's own growth:
    allocator arenas, the transport's buffers). The identity (no calibration) changes nothing."""
    edge: SideCost = SideCost()
    cloud: SideCost = SideCost()
    step_s: float = 0.0
    edge_memory_bytes: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "Calibration":
        return Calibration(SideCost(float(data["edge"]["scale"]), float(data["edge"]["task_s"])),
                           SideCost(float(data["cloud"]["scale"]), float(data["cloud"]["task_s"])),
                           float(data["step_s"]), int(data["edge_memory_bytes"]))


def schedule_key(chunks: int, order: str, checkpoint: str) -> str:
    """A calibration's entry in a profile: the backend's tasks per step follow the schedule."""
    return f"chunks={chunks} order={order} checkpoint={checkpoint}"


def fit_side(profiled: Sequence[float], measured: Sequence[float], tasks: int) -> SideCost:
    """The SideCost through the references' (profiled, measured) compute per step, `tasks` tasks each:
    the least-squares slope (clamped to SCALE_RANGE), the mean rest shared out per task (not below
    0). References that profile alike (within 5 %): the ratio alone."""
    n = len(profiled)
    p_mean, m_mean = sum(profiled) / n, sum(measured) / n
    spread = sum((p - p_mean) ** 2 for p in profiled)
    if max(profiled) - min(profiled) < 0.05 * max(max(profiled), 1e-9):
        return SideCost(_clamp(m_mean / max(p_mean, 1e-9)), 0.0)
    scale = _clamp(sum((p - p_mean) * (m - m_mean) for p, m in zip(profiled, measured)) / spread)
    return SideCost(scale, max(m_mean - scale * p_mean, 0.0) / tasks)


def _clamp(scale: float) -> float:
    return min(max(scale, SCALE_RANGE[0]), SCALE_RANGE[1])


def mean_rest(pairs: Sequence[Tuple[float, float]]) -> float:
    """The mean of measured - predicted over (predicted, measured) pairs."""
    return sum(m - p for p, m in pairs) / len(pairs)
