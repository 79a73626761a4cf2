"""The benchmarks' baseline: the same units as one nn.Sequential, trained by a plain PyTorch step."""
import time
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from edgesplit.assemble import PipelineSpec, RunParts, RunSpec
from edgesplit.boundary.meter import CommMeter
from edgesplit.run.memory import peak_memory_bytes
from edgesplit.logs.summary import SideStats


def device_of(pipeline: PipelineSpec) -> torch.device:
    """The edge's device of the backend (the first of pipeline_backend.devices): plain runs the
    whole model there."""
    devices = pipeline.devices
    first = devices[0] if not isinstance(devices, str) else "cpu"
    if str(first) == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(first))


class PlainStep:
    """zero_grad, forward, loss, backward, optimizer step of nn.Sequential(*units) on one device,
    with the run's `precision` (autocast; fp16 with a GradScaler) and `channels_last`, and the
    run's optimizer and learning rate."""

    def __init__(self, units: List[nn.Module], spec: RunSpec, device: torch.device) -> None:
        precision = spec.precision
        self.device = device
        self.channels_last = precision.channels_last
        self.dtype: Optional[torch.dtype] = precision.dtype
        self.model = nn.Sequential(*units).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimization = spec.optimizer(dict(self.model.named_parameters()))
        self.optimization.start_epoch(0)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=precision.loss_scale,
                                           enabled=precision.scaled)
        self.loss = nn.CrossEntropyLoss()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One training step on a CPU batch (copied to the device, as the backends' steps do)."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimization.zero_grad()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.loss(self.model(x), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimization.optimizer)
        self.scaler.update()
        return float(loss.detach())


def measure_plain(parts: RunParts, x: torch.Tensor, y: torch.Tensor,
                  warmup: int, steps: int) -> Dict[str, Any]:
    """Time `steps` plain steps of the run's units after `warmup` ones, in the form of the
    backends' cells."""
    device = device_of(parts.spec.pipeline)
    step = PlainStep(parts.split.units, parts.spec, device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        tic = time.perf_counter()
        step(x, y)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    parameters = sum(p.numel() for p in step.model.parameters())
    side = SideStats(parameters, peak_memory_bytes(device), sum(times) / max(len(times), 1)).to_dict()
    # no split: the one device is both sides, and nothing crosses a link
    return {"times": times, "sides": {"edge": side, "cloud": side}, "comm": CommMeter().summary().to_dict()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
