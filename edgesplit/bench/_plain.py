"""The benchmarks' baseline: the same units as one nn.Sequential, trained by a plain PyTorch step."""
import time
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from edgesplit.boundary.meter import CommMeter
from edgesplit.run.memory import peak_memory_bytes
from edgesplit.logs.summary import SideStats

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_of(cfg: DictConfig) -> torch.device:
    """The edge's device of the backend config (the first of pipeline_backend.devices): plain runs
    the whole model there."""
    devices = cfg.pipeline_backend.get("devices")
    first = devices[0] if devices is not None and not isinstance(devices, str) else "cpu"
    if str(first) == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(first))


class PlainStep:
    """zero_grad, forward, loss, backward, optimizer step of nn.Sequential(*units) on one device,
    with the run's `precision` (autocast; fp16 with a GradScaler) and `channels_last` where the
    config has them, and the run's optimizer and learning rate."""

    def __init__(self, units: List[nn.Module], cfg: DictConfig, device: torch.device) -> None:
        from edgesplit.run.lr_schedule import Optimization

        self.device = device
        self.channels_last = bool(cfg.get("channels_last", False))
        precision = str(cfg.get("precision", "fp32"))
        if precision not in AUTOCAST:
            raise ValueError(f"precision={precision!r}: one of {', '.join(AUTOCAST)}")
        self.dtype: Optional[torch.dtype] = AUTOCAST[precision]
        self.model = nn.Sequential(*units).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimization = Optimization(dict(self.model.named_parameters()), cfg.schedule, cfg.optimizer)
        self.optimization.start_epoch(0)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=float(cfg.get("loss_scale", 65536.0)),
                                           enabled=precision == "fp16")
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


def measure_plain(cfg: DictConfig, units: List[nn.Module], x: torch.Tensor, y: torch.Tensor,
                  warmup: int, steps: int) -> Dict[str, Any]:
    """Time `steps` plain steps after `warmup` ones, in the form of the backends' cells."""
    device = device_of(cfg)
    step = PlainStep(units, cfg, device)
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
