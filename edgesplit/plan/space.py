"""The candidate space (front x back x compressor x chunks) and each candidate's predicted figures,
from the profiles of this host scaled to the edge and the cloud; ranked, with the Pareto front."""
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from edgesplit.plan.calibration import Calibration
from edgesplit.plan.memory import PartMemory, side_peak_bytes
from edgesplit.plan.measure import CodecProfile, Profile, tensor_name
from edgesplit.plan.step_model import CrossingCost, Link, PartCost, Schedule, StepCosts, predict

# the cloud stages' bounds of a split: (front, back) -> [front, ..., units - back]
Bounds = Callable[[int, int], List[int]]


@dataclass(frozen=True)
class Devices:
    """The edge's compute time as a multiple of this host's, and how many times faster the cloud is."""
    edge_slowdown: float = 1.0
    cloud_speedup: float = 1.0


@dataclass(frozen=True)
class Candidate:
    front: int
    back: int
    compressor: str  # the option's name (conf/compressor/<name>.yaml)
    chunks: int


@dataclass(frozen=True)
class Figures:
    """A candidate's predictions for one training step."""
    candidate: Candidate
    step_s: float
    samples_per_s: float
    up_bytes: int
    down_bytes: int
    edge_peak_bytes: int
    cloud_peak_bytes: int
    bottleneck: str
    busy_s: Dict[str, float]

    @property
    def bytes_per_step(self) -> int:
        return self.up_bytes + self.down_bytes


def single_stage(num_units: int) -> Bounds:
    return lambda front, back: [front, num_units - back]


def _part(profile: Profile, units: range, scale: float, task_s: float) -> PartCost:
    return PartCost(sum(profile.units[u].forward_s for u in units) * scale,
                    sum(profile.units[u].backward_s for u in units) * scale, task_s)


def _memory(profile: Profile, units: range) -> PartMemory:
    first = units.start
    return PartMemory(sum(profile.units[u].param_bytes for u in units),
                      sum(profile.units[u].saved_bytes for u in units),
                      profile.input_bytes if first == 0 else profile.units[first - 1].out_bytes,
                      _transient(profile, units))


def _transient(profile: Profile, units: range) -> int:
    """The peak of a partition's backward: while unit k runs its backward (its measured transient),
    the units before it still hold what they saved."""
    peaks, saved = [], 0
    for u in units:
        if not profile.units[u].train_peak_bytes:
            return 0
        peaks.append(saved + profile.units[u].train_peak_bytes)
        saved += profile.units[u].saved_bytes
    return max(peaks, default=0)


def _crossing(codec: CodecProfile, pass_: str, sender: float, receiver: float) -> CrossingCost:
    p = "forward" if pass_ == "forward" else "backward"
    return CrossingCost(getattr(codec, f"{p}_bytes"), getattr(codec, f"{p}_encode_s") * sender,
                        getattr(codec, f"{p}_decode_s") * receiver)


def costs(profile: Profile, codecs: Mapping[str, CodecProfile], front: int, back: int, bounds: List[int],
          devices: Devices, cal: Calibration = Calibration()) -> StepCosts:
    """The per-micro-batch costs of a split: each side's profiled compute (its codec ends included) as
    the backend runs it (`cal`), the edge's slowed down and the cloud's sped up (as the dist backend
    emulates a slow edge: the whole measured segment, the backend's cost too)."""
    n, slow, fast = len(profile.units), devices.edge_slowdown, devices.cloud_speedup
    edge, cloud = slow * cal.edge.scale, cal.cloud.scale / fast
    edge_task, cloud_task = slow * cal.edge.task_s, cal.cloud.task_s / fast
    f, b = codecs[tensor_name("front", front - 1)], codecs[tensor_name("back", n - back - 1)]
    return StepCosts(_part(profile, range(front), edge, edge_task),
                     tuple(_part(profile, range(bounds[s], bounds[s + 1]), cloud, cloud_task)
                           for s in range(len(bounds) - 1)),
                     _part(profile, range(n - back, n), edge, edge_task),
                     {("front", "forward"): _crossing(f, "forward", edge, cloud),
                      ("front", "backward"): _crossing(f, "backward", cloud, edge),
                      ("back", "forward"): _crossing(b, "forward", cloud, edge),
                      ("back", "backward"): _crossing(b, "backward", edge, cloud)},
                     cal.step_s)


def evaluate(c: Candidate, profile: Profile, codecs: Mapping[str, CodecProfile], bounds: Bounds,
             link: Link, sched: Schedule, devices: Devices, batch_size: int, state_factor: int,
             cal: Calibration = Calibration()) -> Figures:
    """One candidate's predicted step: time, samples/s, bytes, memory of each side, bottleneck."""
    n, cut = len(profile.units), bounds(c.front, c.back)
    stages = len(cut) - 1
    p = predict(costs(profile, codecs, c.front, c.back, cut, devices, cal), link, sched)
    edge = {stages + 1: _memory(profile, range(c.front)), 0: _memory(profile, range(n - c.back, n))}
    cloud = {stages - s: _memory(profile, range(cut[s], cut[s + 1])) for s in range(stages)}
    # a micro-batch's payloads each way are in a side's memory at once (encoded beside their tensors;
    # measured: a step's payloads do not add up, the sent ones are freed as the link takes them)
    payloads = (p.up_bytes + p.down_bytes) // sched.chunks
    return Figures(c, p.step_s, batch_size / p.step_s if p.step_s > 0 else float("inf"), p.up_bytes,
                   p.down_bytes, cal.edge_memory(side_peak_bytes(edge, sched, state_factor) + payloads),
                   side_peak_bytes(cloud, sched, state_factor) + payloads, p.bottleneck, p.busy_s)


def candidates(fronts: Sequence[int], backs: Sequence[int], compressors: Sequence[str], chunks: Sequence[int],
               num_units: int) -> Tuple[List[Candidate], int]:
    """The space's candidates that leave the cloud a unit, and how many did not."""
    every = [Candidate(f, b, comp, m) for f in fronts for b in backs for comp in compressors for m in chunks]
    kept = [c for c in every if c.front + c.back < num_units]
    return kept, len(every) - len(kept)


def ranked(figures: Sequence[Figures]) -> List[Figures]:
    """Fastest first; equal times: fewer bytes first."""
    return sorted(figures, key=lambda f: (f.step_s, f.bytes_per_step))


def pareto_front(figures: Sequence[Figures]) -> List[Figures]:
    """The candidates no other beats on both step time and bytes per step, by bytes."""
    out: List[Figures] = []
    for f in sorted(figures, key=lambda f: (f.bytes_per_step, f.step_s)):
        if not out or f.step_s < out[-1].step_s:
            out.append(f)
    return out


def plan_space(cands: Sequence[Candidate], profiles: Mapping[int, Profile], codec_ids: Mapping[str, str],
               bounds: Bounds, link: Link, schedules: Mapping[int, Schedule], devices: Devices,
               batch_size: int, state_factor: int,
               calibrations: Optional[Mapping[int, Calibration]] = None) -> List[Figures]:
    """Every candidate's figures, ranked: `profiles`, `schedules` and the backend's `calibrations` (none:
    the units' compute alone) by chunks, `codec_ids` maps a compressor option to its entry in a
    profile's codecs."""
    cal = calibrations or {}
    out = [evaluate(c, profiles[c.chunks], profiles[c.chunks].codecs[codec_ids[c.compressor]], bounds, link,
                    schedules[c.chunks], devices, batch_size, state_factor, cal.get(c.chunks, Calibration()))
           for c in cands]
    return ranked(out)
