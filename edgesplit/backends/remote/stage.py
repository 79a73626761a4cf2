"""The stage step program that the edge and every cloud stage run: forwards and backwards of
micro-batches in the order of `order.py`, each between a source and a sink (`ports.py`)."""
import time
from typing import Dict, Iterable, Tuple

import torch
from torch import Tensor, nn

from edgesplit.backends.remote.ports import Ids, Sink, Source, StepInfo
from edgesplit.backends.remote.runner import StageRunner
from edgesplit.backends.remote.transport import Transport


class Stage:
    """One partition between a source and a sink, run micro-batch by micro-batch."""

    def __init__(self, runner: StageRunner, source: Source, sink: Sink) -> None:
        self.runner, self.source, self.sink = runner, source, sink
        self.saved: Dict[int, Tuple[Tensor, Tensor, Ids]] = {}

    @property
    def module(self) -> nn.Module:
        return self.runner.module

    def begin(self, step: StepInfo) -> None:
        self.source.begin(step)
        self.sink.begin(step)
        self.step = step

    def forward(self, i: int) -> None:
        x, ids = self.source.receive(i)
        y = self.runner(x, i)
        self.sink.send(i, y, ids)
        if self.step.train:
            self.saved[i] = (x, y, ids)

    def backward(self, i: int) -> None:
        x, y, ids = self.saved.pop(i)
        self.sink.backward(i, y, ids)
        self.source.send_gradient(i, x.grad, ids)


def run_steps(steps: Iterable[Tuple[Stage, str, int]], transport: Transport, slowdown: float = 1.0) -> float:
    """Run ('F' | 'B', micro-batch) steps of stages in order; returns the seconds spent
    computing (the time blocked on the link is not compute). `slowdown` > 1 (the edge's
    pipeline_backend.edge_slowdown) emulates a slower device, as link.py emulates the link: each
    step's compute (its codec ends included) is padded with a sleep to `slowdown` times its time."""
    t0, wait0 = time.perf_counter(), transport.wait_s
    for stage, op, i in steps:
        s0, w0 = time.perf_counter(), transport.wait_s
        with torch.set_grad_enabled(stage.step.train):
            if op == "F":
                stage.forward(i)
            else:
                stage.backward(i)
        if slowdown > 1:
            time.sleep((slowdown - 1) * max(0.0, time.perf_counter() - s0 - (transport.wait_s - w0)))
    return time.perf_counter() - t0 - (transport.wait_s - wait0)
