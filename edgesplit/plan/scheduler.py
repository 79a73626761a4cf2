"""List scheduling of one training step's tasks on resources: a compute resource runs its program in
order, a link carries what is ready first first (FIFO); a task starts when its resource is free and
its inputs have arrived."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Task:
    """`duration` seconds on `resource`; what waits for it may start `delay` seconds after it ends (a
    link's propagation latency: the link is free again meanwhile)."""
    name: Tuple[str, str, int]  # (part or link, 'F' | 'B', micro-batch)
    resource: str
    duration: float
    deps: Tuple[Tuple[str, str, int], ...] = ()
    delay: float = 0.0


@dataclass
class Timeline:
    """When each task started and ended, and each resource's busy seconds."""
    start: Dict[Tuple[str, str, int], float] = field(default_factory=dict)
    end: Dict[Tuple[str, str, int], float] = field(default_factory=dict)
    busy: Dict[str, float] = field(default_factory=dict)

    @property
    def makespan(self) -> float:
        return max(self.end.values(), default=0.0)


def schedule(tasks: Sequence[Task], programs: Dict[str, List[Tuple[str, str, int]]]) -> Timeline:
    """Start and end of every task. `programs` gives the order of the tasks of each compute resource;
    the tasks of any other resource (a link) run in the order their inputs arrive. Repeatedly starts
    the task that can start earliest. RuntimeError if the programs deadlock."""
    by_name = {t.name: t for t in tasks}
    fifo = {t.resource: [] for t in tasks if t.resource not in programs}  # type: Dict[str, List[Task]]
    for t in tasks:
        if t.resource in fifo:
            fifo[t.resource].append(t)
    out = Timeline(busy={t.resource: 0.0 for t in tasks})
    free = {r: 0.0 for r in out.busy}
    pos = {r: 0 for r in programs}
    ready: Dict[Tuple[str, str, int], float] = {}  # when a finished task's output is there

    def arrival(t: Task) -> Optional[float]:
        if any(d not in ready for d in t.deps):
            return None
        return max((ready[d] for d in t.deps), default=0.0)

    for _ in range(len(tasks)):
        best: Optional[Tuple[float, float, Task]] = None
        heads = [by_name[p[pos[r]]] for r, p in programs.items() if pos[r] < len(p)]
        waiting = [t for queue in fifo.values() for t in queue if t.name not in out.end]
        for t in heads + waiting:
            at = arrival(t)
            if at is not None and (best is None or (max(free[t.resource], at), at) < best[:2]):
                best = (max(free[t.resource], at), at, t)
        if best is None:
            raise RuntimeError(f"the step's programs deadlock after {len(out.end)} of {len(tasks)} tasks")
        begin, _, task = best
        out.start[task.name], out.end[task.name] = begin, begin + task.duration
        free[task.resource] = begin + task.duration
        out.busy[task.resource] += task.duration
        ready[task.name] = begin + task.duration + task.delay
        if task.resource in pos:
            pos[task.resource] += 1
    return out
