"""Calibrate the step model against the backend on this host: three reference splits run on dist
(no link; the plan's edge slowdown) for `plan.calibrate` steps each; each side's measured compute
against its profiled compute gives the side's in-backend factor (and the edge's cost per task), the
step's rest its fixed seconds, the edge's memory its fit. Cached in the profile, as the units are."""
import logging
from typing import Dict, List, Mapping, Sequence

from edgesplit.plan.cache import cache_path, write_profile
from edgesplit.plan.calibration import (SCALE_RANGE, Calibration, SideCost, fit_sides, mean_rest,
                                        pooled_slope, schedule_key)
from edgesplit.plan.inputs import PlanInputs
from edgesplit.plan.measure import Profile
from edgesplit.plan.space import Bounds, Candidate, Devices, Figures, evaluate
from edgesplit.plan.step_model import EDGE_BACK, EDGE_FRONT, Link
from edgesplit.plan.validate import Measured, measure

log = logging.getLogger("edgesplit")

# The references run without the plan's link (the backend's own cost is wanted), with its edge
# slowdown (an emulated slow edge computes slower per unit of slowdown than at full speed: measured).
BARE = ["pipeline_backend.link.bandwidth_mbps=null", "pipeline_backend.link.uplink_mbps=null",
        "pipeline_backend.link.downlink_mbps=null", "pipeline_backend.link.latency_ms=0"]


def calibrated(inputs: PlanInputs) -> bool:
    """Whether the plan calibrates: `plan.calibrate`, on a dist backend this process starts, with this
    host's profile (a brought profile's host is not here to run)."""
    b = inputs.cfg.pipeline_backend
    return (int(inputs.plan.calibrate) > 0 and b.name == "dist" and b.get("role") is None
            and inputs.plan.profile is None)


def references(cands: Sequence[Candidate], chunks: int) -> List[Candidate]:
    """The smallest, the middle and the largest edge of the space at `chunks` (by edge units), with
    the space's first compressor."""
    mine = [c for c in cands if c.chunks == chunks and c.compressor == cands[0].compressor]
    by_edge = sorted(mine, key=lambda c: (c.front + c.back, c.front))
    return list(dict.fromkeys([by_edge[0], by_edge[len(by_edge) // 2], by_edge[-1]]))


def _side_busy(f: Figures) -> Dict[str, float]:
    edge = f.busy_s.get(EDGE_FRONT, 0.0) + f.busy_s.get(EDGE_BACK, 0.0)
    cloud = sum(s for r, s in f.busy_s.items() if r.startswith("cloud"))
    return {"edge": edge, "cloud": cloud}


def fit(inputs: PlanInputs, profile: Profile, refs: Sequence[Candidate], runs: Sequence[Measured],
        bounds: Bounds) -> Calibration:
    """The calibration through the references' runs (their predictions made as they ran: without a
    link, the edge slowed down as planned, the cloud at this host's speed). The edge's task cost is
    kept per unit of slowdown, as costs() scales it."""
    slow = inputs.devices.edge_slowdown
    bare, host = Link(None, None, 0.0), Devices(slow, 1.0)

    def predicted(c: Candidate, cal: Calibration) -> Figures:
        codecs = profile.codecs[inputs.codec_ids[c.compressor]]
        return evaluate(c, profile, codecs, bounds, bare, inputs.schedules[c.chunks], host, inputs.batch_size,
                        inputs.state_factor, cal)

    raw = [_side_busy(predicted(c, Calibration())) for c in refs]
    chunks, stages = refs[0].chunks, len(bounds(refs[0].front, refs[0].back)) - 1
    fitted = fit_sides({s: [r[s] for r in raw] for s in ("edge", "cloud")},
                       {"edge": [m.edge_compute_s for m in runs], "cloud": [m.cloud_compute_s for m in runs]},
                       {"edge": 4 * chunks, "cloud": 2 * chunks * stages})
    edge = fitted["edge"]
    sides = Calibration(SideCost(edge.scale, edge.task_s / slow), fitted["cloud"])
    with_sides = [predicted(c, sides) for c in refs]
    step_s = mean_rest([(f.step_s, m.step_s) for f, m in zip(with_sides, runs)])
    estimates = [f.edge_peak_bytes for f in with_sides]
    memory_scale = pooled_slope([(estimates, [m.edge_peak_bytes for m in runs])]) or 1.0
    memory = mean_rest([(memory_scale * e, m.edge_peak_bytes) for e, m in zip(estimates, runs)])
    return Calibration(sides.edge, sides.cloud, max(step_s, 0.0), int(memory), memory_scale)


def calibrations(inputs: PlanInputs, profiles: Mapping[int, Profile], cands: Sequence[Candidate],
                 bounds: Bounds) -> Dict[int, Calibration]:
    """Each chunks' calibration: the profile's (cached), or measured now and written into it."""
    if not calibrated(inputs):
        return {}
    out = {}
    for chunks, profile in profiles.items():
        sched = inputs.schedules[chunks]
        refs = references(cands, chunks)
        key = (f"{schedule_key(chunks, sched.order, sched.checkpoint)} compressor={refs[0].compressor} "
               f"edge_slowdown={inputs.devices.edge_slowdown:g}")
        if key not in profile.calibrations:
            runs = []
            for c in refs:
                log.info(f"calibrating the backend on this host: front {c.front}, back {c.back}, "
                         f"{c.compressor}, {chunks} chunks, {int(inputs.plan.calibrate)} steps")
                runs.append(measure(inputs, c, int(inputs.plan.warmup), int(inputs.plan.calibrate), BARE))
            profile.calibrations[key] = cal = fit(inputs, profile, refs, runs, bounds)
            if cal.edge.scale in SCALE_RANGE:
                log.warning(f"the calibration is suspect: the backend's compute does not follow the "
                            f"profile (factor {cal.edge.scale:g}, at its bound; a busy machine?): plan "
                            f"again on a quiet one, or plan.calibrate=0 for the units' compute alone")
            write_profile(profile, cache_path(profile.key, inputs.plan.cache_dir))
        out[chunks] = profile.calibrations[key]
    return out
