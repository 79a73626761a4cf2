"""Pipeline orders of the remote backend (`pipeline_backend.order`): each stage's micro-batch steps.

The pipeline has S + 2 stages: the edge's front (stage 0), the cloud stages 1..S and the edge's
back (stage S + 1). A stage's program is a list of steps ('F', i) (forward of micro-batch i) and
('B', i) (its backward). Both ends of every link derive their order of messages from the same
programs: forwards always in increasing micro-batch order, backwards in the program's order.
"""
from typing import Dict, List, Tuple


Step = Tuple[str, int]  # ('F', i) or ('B', i)
EdgeStep = Tuple[str, str, int]  # ('front' | 'back', 'F' | 'B', i)

# Relative cost of the steps in the timing model that orders the edge's two stages (1F1B).
_COST = {"F": 1, "B": 2}


def stage_steps(order: str, n: int, later: int, train: bool = True) -> List[Step]:
    """The program of a stage with `later` stages after it, for `n` micro-batches.

    gpipe: all forwards, then all backwards in reverse order (as torchgpipe).
    1f1b: `later` forwards (warm-up), then one forward and one backward alternately, then the
    remaining backwards; at most `later` + 1 micro-batches are in flight in the stage.
    An eval step (train=False) runs the forwards only."""
    forwards = [("F", i) for i in range(n)]
    if not train:
        return forwards
    if order == "gpipe":
        return forwards + [("B", i) for i in reversed(range(n))]
    warmup = min(later, n)
    steps = forwards[:warmup]
    for i in range(n - warmup):
        steps += [("F", i + warmup), ("B", i)]
    return steps + [("B", i) for i in range(n - warmup, n)]


def start_times(programs: List[List[Step]]) -> Dict[Tuple[int, str, int], int]:
    """Start time of every step (stage, op, i) when each stage runs its program in order and a
    step waits for its input: F(i) for F(i) of the stage before, B(i) for B(i) of the stage after.
    Raises RuntimeError if the programs deadlock."""
    last = len(programs) - 1
    end: Dict[Tuple[int, str, int], int] = {}
    start: Dict[Tuple[int, str, int], int] = {}
    pos, free = [0] * len(programs), [0] * len(programs)
    progress = True
    while progress:
        progress = False
        for k, program in enumerate(programs):
            while pos[k] < len(program):
                op, i = program[pos[k]]
                dep = ((k - 1, op, i) if op == "F" and k > 0
                       else (k + 1, op, i) if op == "B" and k < last else None)
                if dep is not None and dep not in end:
                    break
                t = max(free[k], end[dep] if dep is not None else 0)
                start[(k, op, i)] = t
                end[(k, op, i)] = free[k] = t + _COST[op]
                pos[k] += 1
                progress = True
    if any(p < len(program) for p, program in zip(pos, programs)):
        raise RuntimeError("the pipeline order deadlocks")
    return start


def edge_steps(order: str, n: int, stages: int, train: bool = True) -> List[EdgeStep]:
    """The edge's program: its front (stage 0) and back (stage `stages` + 1) merged.

    gpipe and eval: all front forwards, the back's forwards (and backwards), then the front's
    backwards. 1f1b: the two stages' 1F1B programs merged by the start times of a timing model in
    which they run side by side, so the edge keeps sending front forwards, and computes losses
    and back gradients, while gradients travel through the cloud stages. Any such merge is a
    valid order: every step starts after the steps it waits for, so no rank waits forever."""
    front = stage_steps(order, n, stages + 1, train)
    back = stage_steps(order, n, 0, train)
    if order == "gpipe" or not train:
        return ([("front", op, i) for op, i in front if op == "F"]
                + [("back", op, i) for op, i in back]
                + [("front", op, i) for op, i in front if op == "B"])
    programs = [front] + [stage_steps(order, n, stages - s, train)
                          for s in range(stages)] + [back]
    start = start_times(programs)
    timeline = sorted([(start[(0, op, i)], 1, "front", op, i) for op, i in front]
                      + [(start[(stages + 1, op, i)], 0, "back", op, i) for op, i in back])
    return [(part, op, i) for _, _, part, op, i in timeline]
