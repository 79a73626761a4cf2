"""pipeline_backend.edge_slowdown: the dist edge pads each compute step to F times its measured time
(an emulated slower edge device beside this host's cloud)."""
from types import SimpleNamespace
from typing import Any, Callable, List

import pytest
from omegaconf import DictConfig

from edgesplit.assemble import pipeline_of
from edgesplit.backends.remote import edge, stage as stage_module
from edgesplit.backends.remote.edge import RemoteBackend
from edgesplit.backends.remote.stage import run_steps
from edgesplit.errors import ConfigError
from edgesplit.validate import validate
from tests.dist_helpers import build, config, data


class Clock:
    """A fake clock: compute and waits advance it, sleeps are recorded and advance it too."""

    def __init__(self) -> None:
        self.now: float = 0.0
        self.sleeps: List[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeStage:
    """Each forward computes 0.1 s and waits 0.05 s on the link (blocked: not compute); each
    backward computes 0.2 s."""

    def __init__(self, clock: Clock, transport: Any) -> None:
        self.clock, self.transport, self.step = clock, transport, SimpleNamespace(train=True)

    def forward(self, i: int) -> None:
        self.clock.now += 0.1 + 0.05
        self.transport.wait_s += 0.05

    def backward(self, i: int) -> None:
        self.clock.now += 0.2


@pytest.mark.parametrize("slowdown", [1.0, 3.0])
def test_each_compute_step_is_padded_to_slowdown_times_its_time(slowdown: float,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(stage_module, "time", clock)
    transport = SimpleNamespace(wait_s=0.0)
    stage = FakeStage(clock, transport)
    steps = [(stage, "F", 0), (stage, "F", 1), (stage, "B", 1), (stage, "B", 0)]
    compute = run_steps(steps, transport, slowdown)  # type: ignore[arg-type]
    # the pad of a step is (F - 1) x its compute, the link wait left out: 0.2 per forward, 0.4 per
    # backward at F = 3; none at F = 1. The compute returned is F x (2 x 0.1 + 2 x 0.2) = F x 0.6
    expected = [] if slowdown == 1 else [pytest.approx(0.2), pytest.approx(0.2), pytest.approx(0.4),
                                         pytest.approx(0.4)]
    assert clock.sleeps == expected
    assert compute == pytest.approx(slowdown * 0.6)


def test_the_key_reaches_the_dist_spec_and_is_checked(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("pipeline_backend=dist", "pipeline_backend.edge_slowdown=4")
    validate(cfg)
    dist = pipeline_of(cfg.pipeline_backend).dist
    assert dist is not None and dist.edge_slowdown == 4.0
    with pytest.raises(ConfigError, match=r"pipeline_backend\.edge_slowdown=0\.5 is invalid"):
        validate(make_cfg("pipeline_backend=dist", "pipeline_backend.edge_slowdown=0.5"))


class FakeTransport:
    """The edge's transport without a cloud: sends go nowhere, nothing is waited for."""
    wait_s = 0.0

    def __init__(self, *args: Any) -> None:
        pass

    def send(self, *args: Any) -> None:
        pass

    def wait_sent(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


class StepLoopReached(Exception):
    """run_steps was called: its arguments are recorded, nothing is run."""


def test_the_dist_edge_hands_its_slowdown_to_the_step_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """edge.py takes edge_slowdown from the spec and passes it to run_steps (which pads: the test
    above). The edge in this process without cloud processes (launch, transport and the cloud's
    first state faked), stopped where its first training step enters run_steps."""
    slowdowns: List[float] = []

    def record(steps: Any, transport: Any, slowdown: float = 1.0) -> float:
        slowdowns.append(slowdown)
        raise StepLoopReached

    world = SimpleNamespace(children=[], global_ranks=[0, 1], sealer=None, diagnose=None)
    monkeypatch.setattr(RemoteBackend, "_launch", lambda self, *args: world)
    monkeypatch.setattr(RemoteBackend, "_load_cloud", lambda self, state: None)
    monkeypatch.setattr(edge, "Transport", FakeTransport)
    monkeypatch.setattr(edge, "run_steps", record)
    backend = build("dist", config(edge_slowdown=4.0))
    x, y, ids = data(batches=1)[0]
    try:
        with pytest.raises(StepLoopReached):
            backend.train_step(x, y, ids)
    finally:
        backend.close()
    assert slowdowns == [4.0]
