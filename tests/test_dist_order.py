"""The dist pipeline orders in one process: every rank's program runs without a deadlock, 1f1b
bounds the micro-batches in flight, and the config takes only the orders there are."""
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import pytest

from edgesplit.backends.remote.order import edge_steps, stage_steps

Stream = Tuple[int, int, str]  # (from rank, to rank, "F" or "B")
Op = Tuple[Optional[Stream], Optional[Tuple[str, int]], List[Tuple[Stream, Tuple[str, int]]]]


def _programs(schedule: str, n: int, stages: int) -> Dict[int, List[Op]]:
    """Each rank's ops as the edge and cloud programs make them: (the stream a recv takes from or
    None, the message it expects, the messages it then sends)."""
    ops: Dict[int, List[Op]] = {0: []}
    for part, op, i in edge_steps(schedule, n, stages):
        if part == "front":
            ops[0].append((None, None, [((0, 1, "F"), ("F", i))]) if op == "F"
                          else ((1, 0, "B"), ("B", i), []))
        else:
            ops[0].append(((stages, 0, "F"), ("F", i), []) if op == "F"
                          else (None, None, [((0, stages, "B"), ("B", i))]))
    for s in range(stages):
        r, down = s + 1, (s + 2 if s + 1 < stages else 0)
        ops[r] = [((r - 1, r, "F"), ("F", i), [((r, down, "F"), ("F", i))]) if op == "F"
                  else ((down, r, "B"), ("B", i), [((r, r - 1, "B"), ("B", i))])
                  for op, i in stage_steps(schedule, n, stages - s)]
    return ops


def _run_programs(schedule: str, n: int, stages: int) -> Dict[int, int]:
    """Run every rank's program: sends never block, a recv takes the oldest message of its stream
    and must be the one it expects. Returns the most micro-batches in flight per rank; fails on a
    deadlock."""
    ops = _programs(schedule, n, stages)
    queues: Dict[Stream, Deque[Tuple[str, int]]] = {}
    pos = {r: 0 for r in ops}
    while any(pos[r] < len(ops[r]) for r in ops):
        moved = False
        for r in ops:
            while pos[r] < len(ops[r]):
                stream, expect, sends = ops[r][pos[r]]
                if stream is not None:
                    q = queues.setdefault(stream, deque())
                    if not q:
                        break
                    assert q.popleft() == expect, (schedule, n, stages, r, expect)
                for dst, msg in sends:
                    queues.setdefault(dst, deque()).append(msg)
                pos[r] += 1
                moved = True
        assert moved, f"deadlock: {schedule} chunks={n} stages={stages} at {pos}"
    assert not any(queues.values())
    peaks = {}
    for r, prog in ops.items():
        live, peak = 0, 0
        for _, expect, _ in prog:
            if r and expect is not None:
                live += 1 if expect[0] == "F" else -1
                peak = max(peak, live)
        peaks[r] = peak
    return peaks


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_schedules_never_deadlock(schedule: str) -> None:
    for stages in (1, 2, 3):
        for n in range(1, 9):
            peaks = _run_programs(schedule, n, stages)
            for s in range(stages):  # cloud stage s holds at most (stages after it) + 1
                bound = n if schedule == "gpipe" else min(n, stages - s + 1)
                assert peaks[s + 1] == bound, (schedule, stages, n, peaks)


def test_1f1b_edge_bounds_micro_batches_in_flight() -> None:
    for stages in (1, 2, 3):
        for n in range(1, 9):
            steps = edge_steps("1f1b", n, stages)
            assert sorted(steps) == sorted((p, o, i) for p in ("front", "back")
                                           for o in "FB" for i in range(n))
            live = {"front": 0, "back": 0}
            for part, op, i in steps:
                live[part] += 1 if op == "F" else -1
                assert live["front"] <= min(n, stages + 2) and live["back"] <= 1


def test_config_accepts_1f1b_and_rejects_others() -> None:
    from edgesplit.config import compose_config
    from edgesplit.errors import ConfigError
    from edgesplit.validate import validate
    cfg = compose_config(["pipeline_backend=dist", "pipeline_backend.order=1f1b"])
    assert cfg.pipeline_backend.order == "1f1b"
    validate(cfg)
    cfg.pipeline_backend.order = "zero-bubble"
    with pytest.raises(ConfigError, match=r"order='zero-bubble' is invalid: allowed: gpipe, 1f1b"):
        validate(cfg)
