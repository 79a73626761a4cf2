"""The planner's step model and memory estimate on schedules computed by hand (edgesplit/plan)."""
from typing import Dict, Tuple

import pytest

from edgesplit.plan.calibration import SCALE_RANGE, Calibration, SideCost, fit_sides, pooled_slope
from edgesplit.plan.measure import CodecProfile, Profile, UnitProfile
from edgesplit.plan.space import Devices, costs as space_costs
from edgesplit.plan.memory import PartMemory, activation_bytes, optimizer_state_factor, side_peak_bytes
from edgesplit.plan.step_model import CrossingCost, Link, PartCost, Schedule, StepCosts, predict

KB_PER_S = Link(8e-3, 8e-3)  # 1000 bytes/s each way: a payload of 1000 bytes takes 1 s


def costs(front: PartCost, cloud: PartCost, back: PartCost, nbytes: Dict[Tuple[str, str], int],
          codec: Tuple[float, float] = (0.0, 0.0)) -> StepCosts:
    return StepCosts(front, (cloud,), back, {k: CrossingCost(v, *codec) for k, v in nbytes.items()})


FRONT_HEAVY = {("front", "forward"): 1000, ("front", "backward"): 1000, ("back", "forward"): 100,
               ("back", "backward"): 100}
UP_ONLY = {("front", "forward"): 1000, ("front", "backward"): 0, ("back", "forward"): 0,
           ("back", "backward"): 0}
NOTHING = {k: 0 for k in UP_ONLY}
EDGE, CLOUD = PartCost(1, 2), PartCost(10, 20)
TENTH = PartCost(0.1, 0.1)

CASES = [
    # one micro-batch, each step after the other: edge front F 1, up 1000 B = 1, cloud F 10,
    # down 100 B = 0.1, edge back F 1 and B 2, up 0.1, cloud B 20, down 1, edge front B 2: 38.2
    ("one micro-batch", costs(EDGE, CLOUD, EDGE, FRONT_HEAVY), KB_PER_S, Schedule(1, "gpipe", "never"),
     38.2, "cloud"),
    # the same with the codecs: each crossing adds its encode 0.5 and decode 0.25 (4 x 0.75 = 3)
    ("codec time", costs(EDGE, CLOUD, EDGE, FRONT_HEAVY, (0.5, 0.25)), KB_PER_S,
     Schedule(1, "gpipe", "never"), 41.2, "cloud"),
    # checkpoint=always recomputes every forward in the backward: + 1 + 10 + 1 = 50.2
    ("recomputed", costs(EDGE, CLOUD, EDGE, FRONT_HEAVY), KB_PER_S, Schedule(1, "gpipe", "always"),
     50.2, "cloud"),
    # except_last with one micro-batch recomputes none (as torchgpipe): 38.2
    ("except_last, m=1", costs(EDGE, CLOUD, EDGE, FRONT_HEAVY), KB_PER_S, Schedule(1, "gpipe", "except_last"),
     38.2, "cloud"),
    # compute-bound, 4 micro-batches: the cloud's forwards run 2..42, the last one's down 0.1 and
    # edge back F 1 end 43.1; its B 2 (45.1), up 0.1 (45.2), then the cloud's 4 backwards of 20
    # back to back (125.2), down 1 (126.2), the edge front's B of micro-batch 0: 128.2
    ("compute-bound", costs(EDGE, CLOUD, EDGE, FRONT_HEAVY), KB_PER_S, Schedule(4, "gpipe", "never"),
     128.2, "cloud"),
    # link-bound, 3 micro-batches, 0.1 s per partition pass, only the front activation costs (1 s):
    # the edge sends at 0.1, 0.2, 0.3; the uplink carries them 0.1-1.1, 1.1-2.1, 2.1-3.1; the cloud's
    # forwards end 1.2, 2.2, 3.2; the edge (one device, gpipe: front Fs, back F/Bs, front Bs) runs
    # back F 1.2-1.3, 2.2-2.3, 3.2-3.3, back B 2, 1, 0 to 3.6; the cloud's B 2, 1, 0 end 3.5, 3.6,
    # 3.7; the front's B 2, 1, 0: 3.6-3.7, 3.7-3.8, 3.8-3.9
    ("link-bound", costs(TENTH, TENTH, TENTH, UP_ONLY), KB_PER_S, Schedule(3, "gpipe", "never"),
     3.9, "uplink"),
    # latency-bound: no compute, no bytes, 50 ms each way: the step is the four crossings of one
    # micro-batch in turn (up F, down F, up B, down B), the others' overlap them: 0.2
    ("latency-bound", costs(PartCost(0, 0), PartCost(0, 0), PartCost(0, 0), NOTHING), Link(None, None, 50.0),
     Schedule(4, "gpipe", "never"), 0.2, None),
    # the backend's cost (calibrated): "one micro-batch" + 0.5 on each of the edge's 4 tasks + 1 on each
    # of the cloud's 2 + 3 per step: 38.2 + 2 + 2 + 3
    ("backend cost", StepCosts(PartCost(1, 2, 0.5), (PartCost(10, 20, 1.0),), PartCost(1, 2, 0.5),
                               {k: CrossingCost(v) for k, v in FRONT_HEAVY.items()}, fixed_s=3.0),
     KB_PER_S, Schedule(1, "gpipe", "never"), 45.2, "cloud"),
]


@pytest.mark.parametrize("name,step,link,sched,expected,bottleneck", CASES, ids=[c[0] for c in CASES])
def test_step_time_matches_the_hand_computed_schedule(name: str, step: StepCosts, link: Link, sched: Schedule,
                                                      expected: float, bottleneck: str) -> None:
    p = predict(step, link, sched)
    assert p.step_s == pytest.approx(expected)
    if bottleneck is not None:
        assert p.bottleneck == bottleneck
    # bytes per step: every micro-batch's four payloads, up = front forward + back backward
    x = step.crossings
    assert p.up_bytes == sched.chunks * (x["front", "forward"].nbytes + x["back", "backward"].nbytes)
    assert p.down_bytes == sched.chunks * (x["back", "forward"].nbytes + x["front", "backward"].nbytes)


def test_slower_edge_moves_the_bottleneck_and_1f1b_is_no_slower_than_gpipe() -> None:
    # an edge 30x slower than the cloud's 10/20 per micro-batch: edge front + back = 2 x (30 + 60) per
    # micro-batch on one device: the edge is the busiest
    slow_edge = costs(PartCost(30, 60), CLOUD, PartCost(30, 60), FRONT_HEAVY)
    gpipe = predict(slow_edge, KB_PER_S, Schedule(4, "gpipe", "never"))
    assert gpipe.bottleneck == "edge" and gpipe.busy_s["edge front"] == pytest.approx(4 * 90)
    assert predict(slow_edge, KB_PER_S, Schedule(4, "1f1b", "never")).step_s <= gpipe.step_s + 1e-9
    # on separate devices (shared_edge=False) the front and back overlap: never slower
    apart = predict(slow_edge, KB_PER_S, Schedule(4, "gpipe", "never", shared_edge=False))
    assert apart.step_s <= gpipe.step_s + 1e-9 and apart.bottleneck in ("edge front", "edge back")


def test_memory_estimate_by_hand() -> None:
    part = PartMemory(param_bytes=100, saved_bytes=1000, input_bytes=10)
    # gpipe, 4 in flight, except_last: micro-batches 0-2 keep their input (3 x 10), 3 its saved
    # tensors (1000), and a recomputation brings one micro-batch's 1000 back: 2030
    assert activation_bytes(part, Schedule(4, "gpipe", "except_last"), later=2) == 2030
    # never: 4 x 1000; 1f1b with 1 later stage holds 2 micro-batches: 2 x 1000
    assert activation_bytes(part, Schedule(4, "gpipe", "never"), later=2) == 4000
    assert activation_bytes(part, Schedule(4, "1f1b", "never"), later=1) == 2000
    # + parameters, their gradients, SGD's momentum: 3 x 100
    assert side_peak_bytes({2: part}, Schedule(4, "gpipe", "except_last"), 1) == 2330
    # measured transients (one partition computes at a time): every micro-batch keeps its tensors, the
    # one in its backward holds the larger partition's transient instead. gpipe, except_last: front
    # 10+10+10+1000 kept, back 20+20+20+200; the front's 5000 replacing its largest kept (1000) adds
    # more than the back's 3000 replacing its 200: 300 (parameters) + 1030 + 260 + 4000
    front = PartMemory(100, 1000, 10, transient_bytes=5000)
    back = PartMemory(0, 200, 20, transient_bytes=3000)
    assert side_peak_bytes({1: front, 0: back}, Schedule(4, "gpipe", "except_last"), 1) == 5590
    assert optimizer_state_factor({"_target_": "torch.optim.SGD", "momentum": 0.9}) == 1
    assert optimizer_state_factor({"_target_": "torch.optim.SGD", "momentum": 0.0}) == 0
    assert optimizer_state_factor({"_target_": "torch.optim.AdamW"}) == 2


def test_the_calibration_fits_the_backends_cost_and_scales_it_with_the_devices() -> None:
    """fit_side: measured = 1.5 x profiled + 0.2 per step over 4 tasks is found back; a slope past the
    range is clamped; references that profile alike give the ratio. costs(): the edge's profiled
    compute x slowdown x its factor, its task cost x slowdown; the cloud's / speedup."""
    # edge: 1.5 x profiled + 0.2 over 4 tasks; cloud (barely varying): the ratio of the means
    sides = fit_sides({"edge": [0.1, 0.2, 0.4], "cloud": [1.0, 1.1, 1.0]},
                      {"edge": [0.35, 0.5, 0.8], "cloud": [1.9, 2.2, 1.9]}, {"edge": 4, "cloud": 2})
    assert sides == {"edge": SideCost(pytest.approx(1.5), pytest.approx(0.05)),
                     "cloud": SideCost(pytest.approx(6.0 / 3.1), 0.0)}
    assert pooled_slope([([0.1, 0.2], [0.1, 2.0])]) == SCALE_RANGE[1]
    alike = fit_sides({"edge": [0.1, 0.101]}, {"edge": [0.3, 0.3]}, {"edge": 2})
    assert alike == {"edge": SideCost(pytest.approx(0.6 / 0.201), 0.0)}
    unit = UnitProfile(1.0, 2.0, (4,), 0, 16, 16)
    codec = CodecProfile(8, 8, 0.0, 0.0, 0.0, 0.0)
    profile = Profile({}, [unit] * 4, 16, {"c": {"front@0": codec, "back@2": codec}})
    cal = Calibration(SideCost(1.5, 0.1), SideCost(2.0, 0.2), 0.7, 1000, 1.25)
    step = space_costs(profile, profile.codecs["c"], 1, 1, [1, 3], Devices(2.0, 4.0), cal)
    assert step.edge_front == PartCost(1.0 * 2 * 1.5, 2.0 * 2 * 1.5, 0.1 * 2)
    assert step.cloud == (PartCost(2.0 * 2 / 4, 4.0 * 2 / 4, 0.2 / 4),)
    assert step.fixed_s == 0.7 and cal.edge_memory(4000) == 6000
