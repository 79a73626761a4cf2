"""Training step times: a mergeable log histogram for the run's median, and the pace of log lines."""
import math
import statistics
import time
from typing import Dict, List, Mapping, Optional

RATIO = 1.01  # each bin's upper edge is 1 % above its lower edge
LOW_S = 1e-6  # the first bin's lower edge (faster steps count into it)
BINS = math.ceil(math.log(1e6 / LOW_S) / math.log(RATIO))  # up to 10^6 s a step


def _bin(seconds: float) -> int:
    if not seconds > LOW_S:  # also NaN
        return 0
    return min(BINS - 1, int(math.log(seconds / LOW_S) / math.log(RATIO)))


def _center(index: int) -> float:
    """The geometric middle of a bin: within sqrt(RATIO) - 1 = 0.5 % of every time in it."""
    return LOW_S * RATIO ** (index + 0.5)


class StepHistogram:
    """Counts of step times in fixed log-spaced bins: bounded in size however long the run, merged
    by adding counts (a resumed run goes on from the checkpoint's), its median within 0.5 %."""

    def __init__(self, counts: Optional[Mapping[int, int]] = None) -> None:
        self.counts: Dict[int, int] = {int(k): int(v) for k, v in (counts or {}).items() if int(v) > 0}

    def add(self, seconds: float) -> None:
        i = _bin(seconds)
        self.counts[i] = self.counts.get(i, 0) + 1

    def merge(self, other: "StepHistogram") -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def median(self) -> Optional[float]:
        """The median step time (bin middles; of the two middle steps' bins for an even count)."""
        n = self.count
        if not n:
            return None
        wanted, found = sorted({(n - 1) // 2, n // 2}), []
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            while wanted and wanted[0] < seen:
                found.append(_center(i))
                wanted.pop(0)
        return (found[0] + found[-1]) / 2

    def state_dict(self) -> Dict[int, int]:
        """{bin: count}: plain ints, so a checkpoint loads it with weights_only."""
        return dict(self.counts)


class RunStepTimes:
    """The step times of a run (this process and, resumed, the ones before): the first step after
    start or resume pays for warm-up (allocations, threads, caches) and is left out, unless it is
    the only one."""

    def __init__(self, state: Optional[Mapping[int, int]] = None) -> None:
        self.histogram = StepHistogram(state)
        self.first: Optional[float] = None

    def add(self, seconds: float) -> bool:
        """Count one step; False for the warm-up step left out."""
        if self.first is None:
            self.first = seconds
            return False
        self.histogram.add(seconds)
        return True

    def median(self) -> Optional[float]:
        median = self.histogram.median()
        return self.first if median is None else median


def epoch_median(times: List[float], counted: List[bool]) -> float:
    """The median of an epoch's step times without a warm-up step (with it if it is the only one)."""
    kept = [t for t, c in zip(times, counted) if c] or times
    return statistics.median(kept)


class Pace:
    """Wall-clock pace between log lines: mean seconds per step and samples per second since the
    last line (data loading included: what a step costs the run)."""

    def __init__(self) -> None:
        self.since, self.steps, self.samples = time.perf_counter(), 0, 0

    def step(self, samples: int) -> None:
        self.steps, self.samples = self.steps + 1, self.samples + samples

    def line(self) -> str:
        """'0.412 s/step, 155.3 samples/s over 10 steps'; starts the next span."""
        now = time.perf_counter()
        seconds = max(now - self.since, 1e-9)
        text = (f"{seconds / max(self.steps, 1):.3f} s/step, {self.samples / seconds:.1f} samples/s "
                f"over {self.steps} step{'s' if self.steps != 1 else ''}")
        self.since, self.steps, self.samples = now, 0, 0
        return text
