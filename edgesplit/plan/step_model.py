"""The step model: one training step of a candidate as tasks on five resources [edge front, uplink,
cloud stage(s), downlink, edge back], scheduled as the backend orders micro-batches (GPipe's fill and
drain, or dist's 1F1B), with each crossing's codec time at its sender and receiver, link time =
bytes / rate + latency, and the forward recomputed in the backward where the checkpoint policy says."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from edgesplit.backends.remote.order import edge_steps, stage_steps
from edgesplit.plan.scheduler import Task, schedule

EDGE_FRONT, EDGE_BACK, UPLINK, DOWNLINK, EDGE = "edge front", "edge back", "uplink", "downlink", "edge"


@dataclass(frozen=True)
class PartCost:
    """One partition's seconds per micro-batch on its device (already scaled to that device), and the
    backend's fixed seconds of each of its tasks (calibration.SideCost.task_s)."""
    forward_s: float
    backward_s: float
    task_s: float = 0.0


@dataclass(frozen=True)
class CrossingCost:
    """One crossing per micro-batch: payload bytes, the sender's encode and the receiver's decode."""
    nbytes: int
    encode_s: float = 0.0
    decode_s: float = 0.0


@dataclass(frozen=True)
class Link:
    """The edge link: Mbit/s per direction (None: unlimited) and the one-way latency."""
    up_mbps: Optional[float]
    down_mbps: Optional[float]
    latency_ms: float = 0.0

    def serialize_s(self, direction: str, nbytes: int) -> float:
        """Seconds the link is busy with one message (the latency comes on top, overlapping)."""
        mbps = self.up_mbps if direction == "up" else self.down_mbps
        return nbytes * 8 / (mbps * 1e6) if mbps else 0.0


@dataclass(frozen=True)
class Schedule:
    """How the backend runs a step: micro-batches, their order, the recomputation policy
    (pipeline_backend.checkpoint), and whether the edge front and back share one device (dist: one
    edge process runs both, in the order of order.edge_steps)."""
    chunks: int
    order: str = "gpipe"  # Order
    checkpoint: str = "except_last"  # CheckpointMode
    shared_edge: bool = True

    def recomputes(self, i: int) -> bool:
        """As StageRunner.recomputes: the first micro-batches keep only their input."""
        return i < {"always": self.chunks, "except_last": self.chunks - 1, "never": 0}[self.checkpoint]


@dataclass(frozen=True)
class StepCosts:
    """A candidate's per-micro-batch costs: its partitions and its four crossings ('front'/'back'
    boundary x 'forward'/'backward' pass); and the step's seconds outside its tasks (the optimizer
    steps: calibration.Calibration.step_s)."""
    edge_front: PartCost
    cloud: Tuple[PartCost, ...]
    edge_back: PartCost
    crossings: Dict[Tuple[str, str], CrossingCost]
    fixed_s: float = 0.0


@dataclass(frozen=True)
class StepPrediction:
    """Seconds per step, payload bytes per step each way, each resource's busy seconds, the busiest
    device or link (the edge front and back count as one device where they share it)."""
    step_s: float
    up_bytes: int
    down_bytes: int
    busy_s: Dict[str, float]
    bottleneck: str


def cloud_name(s: int, stages: int) -> str:
    return "cloud" if stages == 1 else f"cloud stage {s + 1}"


def _parts(costs: StepCosts) -> List[Tuple[str, PartCost]]:
    """The pipeline's compute stages in order: edge front, cloud stage(s), edge back."""
    stages = len(costs.cloud)
    return ([(EDGE_FRONT, costs.edge_front)] + [(cloud_name(s, stages), c) for s, c in enumerate(costs.cloud)]
            + [(EDGE_BACK, costs.edge_back)])


def step_tasks(costs: StepCosts, link: Link, sched: Schedule) -> List[Task]:
    """Every task of one step: each partition's forward and backward of each micro-batch (with the
    codec ends it runs and its recomputation), and each payload on the link."""
    parts = _parts(costs)
    last = len(parts) - 1
    x = costs.crossings
    # (stage k's forward output crosses on this link, its direction and crossing), for k = 0 and last - 1
    links = {0: (UPLINK, "up", x["front", "forward"]), last - 1: (DOWNLINK, "down", x["back", "forward"])}
    back_links = {last: (UPLINK, "up", x["back", "backward"]), 1: (DOWNLINK, "down", x["front", "backward"])}
    latency = link.latency_ms / 1000.0
    tasks = []
    for i in range(sched.chunks):
        for k, (name, cost) in enumerate(parts):
            before = (links[k - 1][0] if k - 1 in links else parts[k - 1][0]) if k > 0 else None
            f_dep = () if before is None else ((before, "F", i),)
            f_codec = ((links[k][2].encode_s if k in links else 0.0)
                       + (links[k - 1][2].decode_s if k - 1 in links else 0.0))
            tasks.append(Task((name, "F", i), name, cost.forward_s + f_codec + cost.task_s, f_dep))
            b_dep = ((name, "F", i),) + (() if k == last else
                                         ((back_links[k + 1][0], "B", i) if k + 1 in back_links
                                          else (parts[k + 1][0], "B", i),))
            b_codec = ((back_links[k][2].encode_s if k in back_links else 0.0)
                       + (back_links[k + 1][2].decode_s if k + 1 in back_links else 0.0))
            recompute = cost.forward_s if sched.recomputes(i) else 0.0
            b_s = cost.backward_s + recompute + b_codec + cost.task_s
            tasks.append(Task((name, "B", i), name, b_s, b_dep))
        for table, op in ((links, "F"), (back_links, "B")):
            for k, (resource, direction, crossing) in table.items():
                tasks.append(Task((resource, op, i), resource, link.serialize_s(direction, crossing.nbytes),
                                  ((parts[k][0], op, i),), latency))
    return tasks


def programs(costs: StepCosts, sched: Schedule) -> Dict[str, List[Tuple[str, str, int]]]:
    """Each compute resource's order of tasks: the backend's (order.py), the edge's merged where
    its front and back share the device."""
    parts = [name for name, _ in _parts(costs)]
    last = len(parts) - 1
    out = {name: [(name, op, i) for op, i in stage_steps(sched.order, sched.chunks, last - k)]
           for k, name in enumerate(parts)}
    if sched.shared_edge:
        del out[EDGE_FRONT], out[EDGE_BACK]
        out[EDGE] = [(EDGE_FRONT if part == "front" else EDGE_BACK, op, i)
                     for part, op, i in edge_steps(sched.order, sched.chunks, len(costs.cloud))]
    return out


def predict(costs: StepCosts, link: Link, sched: Schedule) -> StepPrediction:
    """The step's predicted time, bytes, resource loads and bottleneck."""
    tasks = step_tasks(costs, link, sched)
    order = programs(costs, sched)
    if sched.shared_edge:  # the edge's two parts are one resource
        tasks = [Task(t.name, EDGE if t.resource in (EDGE_FRONT, EDGE_BACK) else t.resource, t.duration,
                      t.deps, t.delay) for t in tasks]
    timeline = schedule(tasks, order)
    busy: Dict[str, float] = {}
    for t in tasks:
        busy[t.name[0]] = busy.get(t.name[0], 0.0) + t.duration
    devices = dict(busy)
    if sched.shared_edge:
        devices[EDGE] = devices.pop(EDGE_FRONT) + devices.pop(EDGE_BACK)
    x = costs.crossings
    up = sched.chunks * (x["front", "forward"].nbytes + x["back", "backward"].nbytes)
    down = sched.chunks * (x["back", "forward"].nbytes + x["front", "backward"].nbytes)
    return StepPrediction(timeline.makespan + costs.fixed_s, up, down, busy,
                          max(devices, key=lambda r: devices[r]))
