"""Helpers of the dist tests: tiny units, stand-in codecs, configs, and a torchgpipe reference."""
import copy
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from edgesplit.codecs.base import Codec
from edgesplit.config import DistConfig, ScheduleConfig


class Fp32(Codec):
    """Stand-in identity codec: [ndim, *shape] int64 header + fp32 data."""

    def encode(self, x: Tensor, support: Optional[Tensor] = None) -> Tensor:
        x = x.detach().float().contiguous()
        head = torch.tensor([x.dim(), *x.shape], dtype=torch.int64)
        return torch.cat([head.view(torch.uint8), x.view(-1).view(torch.uint8)])

    def decode(self, payload: Tensor, support: Optional[Tensor] = None) -> Tensor:
        ndim = int(payload[:8].view(torch.int64))
        shape = payload[8:8 + 8 * ndim].view(torch.int64).tolist()
        return payload[8 + 8 * ndim:].view(torch.float32).view(shape).clone()


class Quant8(Codec):
    """Stand-in min-max 8-bit quantizer: header [ndim, *shape] int64, min/scale fp32, codes."""

    def encode(self, x: Tensor, support: Optional[Tensor] = None) -> Tensor:
        x = x.detach().float().contiguous()
        lo, hi = x.min(), x.max()
        scale = (hi - lo) / 255 if hi > lo else torch.ones(())
        codes = torch.round((x - lo) / scale).clamp(0, 255).to(torch.uint8)
        head = torch.tensor([x.dim(), *x.shape], dtype=torch.int64)
        params = torch.stack([lo, scale]).float()
        return torch.cat([head.view(torch.uint8), params.view(torch.uint8), codes.view(-1)])

    def decode(self, payload: Tensor, support: Optional[Tensor] = None) -> Tensor:
        ndim = int(payload[:8].view(torch.int64))
        end = 8 + 8 * ndim
        shape = payload[8:end].view(torch.int64).tolist()
        lo, scale = payload[end:end + 8].view(torch.float32).tolist()
        return (payload[end + 8:].float() * scale + lo).view(shape)


@dataclass
class Codecs:
    """Stand-in of edgesplit.compression.BoundaryCodecs."""
    activation: Codec
    gradient: Codec
    reuses_support: bool = False


def codecs(name: str) -> Dict[str, Codecs]:
    make = {"none": Fp32, "quantize": Quant8}[name]
    return {"front": Codecs(make(), make()), "back": Codecs(make(), make())}


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x)))


def tiny_units(seed: int = 0, n: int = 5, width: int = 8, classes: int = 4) -> List[nn.Module]:
    torch.manual_seed(seed)
    units: List[nn.Module] = [Block(3, width)]
    units += [Block(width, width) for _ in range(n - 2)]
    units.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)))
    return units


def config(chunks: int = 2, stages: int = 1, compressor: str = "none", timeout_s: float = 10.0,
           threads: Optional[int] = 1, **backend: Any) -> Any:
    b = OmegaConf.structured(DistConfig(chunks=chunks, timeout_s=timeout_s))
    b = OmegaConf.merge(b, backend)
    return OmegaConf.create({
        "pipeline_backend": b, "seed": 0, "threads": threads,
        "compressor": {"name": compressor, "eval_compressed": True},
        "schedule": OmegaConf.structured(ScheduleConfig(lr=0.05, epochs=10, warmup_epochs=0)),
        "partition": {"front": 1, "back": 1, "cloud_stages": stages},
    })


def data(batches: int = 4, batch: int = 8, classes: int = 4, seed: int = 1) -> List[tuple]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float() * 0.5
        out.append((x, y))
    return out


def run_backend(name: str, units: List[nn.Module], cfg: Any, codec: str, batches: List[tuple],
                meter: Any = None, epochs: int = 1) -> List[float]:
    """Training losses of backend `name` ('gpipe' or 'dist') as the training loop drives it."""
    from edgesplit.backends import build_backend
    from edgesplit.comm import CommMeter
    from edgesplit.partition import split_units
    from edgesplit.schedule import build_optimizer, build_scheduler
    cfg = copy.deepcopy(cfg)
    cfg.pipeline_backend.name = name
    split = split_units(copy.deepcopy(units), 1, 1, cfg.partition.cloud_stages)
    backend = build_backend(cfg, split, codecs(codec), meter if meter is not None else CommMeter())
    losses = []
    try:
        opt = build_optimizer(backend.parameters(), cfg.schedule)
        scheduler = build_scheduler(opt, cfg.schedule, 0)
        for epoch in range(epochs):
            backend.on_epoch_start(epoch)
            backend.train(True)
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                r = backend.train_step(x, y)
                opt.step()
                losses.append(r.loss_sum / r.count)
            scheduler.step()
        return losses
    finally:
        backend.close()


def dist_process_count() -> int:
    """Live processes started by the dist backend (local cloud ranks) on this machine."""
    import psutil
    n = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "edgesplit.backends.dist" in cmd and p.pid != os.getpid():
            n += 1
    return n


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["experiment=smoke", "pipeline_backend=dist", "compressor=quantize", "data.num_workers=0",
         "pipeline_backend.timeout_s=10"]


def train_argv(*overrides: str) -> List[str]:
    """`python train.py` on the smoke experiment with the dist backend."""
    import sys
    return [sys.executable, os.path.join(REPO, "train.py"), *SMOKE, *overrides]


def train_env() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=REPO, HYDRA_FULL_ERROR="0")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
