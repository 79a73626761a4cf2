"""SGD with the seed's per-epoch schedule: linear warm-up times cosine annealing, from torch's schedulers."""
import warnings
from typing import Iterable

import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import ChainedScheduler, CosineAnnealingLR, LinearLR, LRScheduler


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: DictConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, start_epoch: int = 0) -> LRScheduler:
    """lr(e) = lr * (1 + cos(pi e / epochs)) / 2 * min(1, (e + 1) / warmup); stepped once per epoch.

    Resuming replays the steps of the finished epochs, so the rates equal an uninterrupted run's.
    """
    schedulers: list = []
    if cfg.warmup_epochs > 1:
        schedulers.append(LinearLR(optimizer, start_factor=1 / cfg.warmup_epochs, end_factor=1.0,
                                   total_iters=cfg.warmup_epochs - 1))
    schedulers.append(CosineAnnealingLR(optimizer, T_max=cfg.epochs))
    scheduler = ChainedScheduler(schedulers, optimizer=optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(start_epoch):
            scheduler.step()
    return scheduler
