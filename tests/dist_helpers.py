"""Helpers of the dist tests: tiny units, codecs, configs, and a torchgpipe reference."""
import copy
import os
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from edgesplit.assemble import DataFacts, RunParts, assemble
from edgesplit.backends import Backend
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs, build_codecs
from edgesplit.config import compose_config


def codecs(name: str) -> Dict[str, BoundaryCodecs]:
    """The real codecs of `compressor=<name>` for both boundaries."""
    return build_codecs(compose_config([f"compressor={name}"]).compressor)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x)))


def tiny_units(num_classes: int = 4, width: float = 1.0, n: int = 5, seed: int = 0) -> List[nn.Module]:
    """A model of `n` units; `model._target_=tests.dist_helpers.tiny_units` in config()."""
    torch.manual_seed(seed)
    c = max(1, round(8 * width))
    units: List[nn.Module] = [Block(3, c)]
    units += [Block(c, c) for _ in range(n - 2)]
    units.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)))
    return units


def pooled_units(num_classes: int = 4, width: float = 1.0, n: int = 5, seed: int = 0) -> List[nn.Module]:
    """tiny_units behind a 4x4 average pool: a 32x32 image costs what an 8x8 one does (train.py runs)."""
    units = tiny_units(num_classes, width, n, seed)
    units[0] = nn.Sequential(nn.AvgPool2d(4), units[0])
    return units


def config(chunks: int = 2, stages: int = 1, compressor: str = "none", timeout_s: float = 60.0,
           threads: Optional[int] = 1, optimizer: str = "sgd", **backend: Any) -> DictConfig:
    """The real dist config with tiny_units (4 classes), lr 0.05 and the given backend keys."""
    cfg = compose_config(["pipeline_backend=dist", f"compressor={compressor}",
                          f"partition.cloud_stages={stages}", f"pipeline_backend.chunks={chunks}",
                          f"pipeline_backend.timeout_s={timeout_s}", f"threads={threads}",
                          "model._target_=tests.dist_helpers.tiny_units", "model.num_classes=4",
                          "schedule.lr=0.05", "schedule.epochs=10", "schedule.warmup_epochs=0",
                          f"optimizer={optimizer}"])
    for key, value in backend.items():
        OmegaConf.update(cfg, f"pipeline_backend.{key}", value, merge=True)
    return cfg


def data(batches: int = 4, batch: int = 8, classes: int = 4, seed: int = 1) -> List[tuple]:
    """(x, y, dataset indices) batches: batch b holds samples b*batch .. (b+1)*batch - 1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batches):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float() * 0.5
        out.append((x, y, torch.arange(b * batch, (b + 1) * batch)))
    return out


SAMPLES = 256  # the dataset indices data() gives stay below: rows of per-sample codec state


def assembled(cfg: DictConfig, units: Optional[List[nn.Module]] = None, samples: int = SAMPLES,
              shape: Tuple[int, ...] = (3, 8, 8)) -> RunParts:
    """The run of cfg on `samples` inputs of `shape` (data()'s, no dataset): tiny_units, or copies of
    `units`."""
    facts = DataFacts(int(cfg.model.num_classes), samples, 0, shape)
    return assemble(cfg, facts, copy.deepcopy(units) if units is not None else tiny_units())


def build(name: str, cfg: DictConfig, meter: Optional[CommMeter] = None,
          units: Optional[List[nn.Module]] = None, samples: int = SAMPLES,
          shape: Tuple[int, ...] = (3, 8, 8)) -> Backend:
    """Backend `name` ('naive', 'gpipe' or 'dist') on tiny_units as cfg says, for `samples`
    training inputs of `shape`."""
    from edgesplit.backends import build_backend
    cfg = copy.deepcopy(cfg)
    target = {"naive": "edgesplit.backends.naive.NaiveBackend",
              "gpipe": "edgesplit.backends.gpipe.GPipeBackend",
              "dist": "edgesplit.backends.remote.RemoteBackend"}[name]
    OmegaConf.update(cfg, "pipeline_backend._target_", target)
    OmegaConf.update(cfg, "pipeline_backend.name", name)
    return build_backend(assembled(cfg, units, samples, shape),
                         meter if meter is not None else CommMeter())


def train_epochs(backend: Backend, batches: List[tuple], epochs: int = 1) -> List[float]:
    """Training losses of `backend` as the training loop drives it, from epoch 0."""
    losses = []
    for epoch in range(epochs):
        backend.start_epoch(epoch)
        backend.train(True)
        for x, y, ids in batches:
            r = backend.train_step(x, y, ids)
            losses.append(r.loss_sum / r.count)
        backend.side_stats()  # as the trainer at an epoch's end: the cloud's figures join the meter
    return losses


def train_backend(name: str, cfg: DictConfig, batches: List[tuple], meter: Optional[CommMeter] = None,
                  epochs: int = 1, samples: int = SAMPLES) -> Tuple[List[float], Dict[str, Any]]:
    """Training losses of a new backend `name` (for `samples` training samples), and its state_dict
    after them."""
    backend = build(name, cfg, meter, samples=samples)
    try:
        return train_epochs(backend, batches, epochs), backend.state_dict()
    finally:
        backend.close()


def run_backend(name: str, cfg: DictConfig, batches: List[tuple],
                meter: Optional[CommMeter] = None, epochs: int = 1) -> List[float]:
    """Training losses of a new backend `name` as the training loop drives it."""
    backend = build(name, cfg, meter)
    try:
        return train_epochs(backend, batches, epochs)
    finally:
        backend.close()


class WarmBackend:
    """One started backend that several tests share (a dist one costs seconds of process start):
    `fresh()` hands it back in its first state (every process's, by load_state_dict) with a
    reset meter."""

    def __init__(self, name: str, cfg: DictConfig) -> None:
        self.cfg, self.meter = cfg, CommMeter()
        self.backend = build(name, cfg, self.meter)
        self.first = self.backend.state_dict()

    def fresh(self) -> Backend:
        self.backend.load_state_dict(self.first)
        self.meter.reset()
        return self.backend


def wait_for(event: Callable[[], bool], what: str, proc: Optional[subprocess.Popen] = None,
             limit_s: float = 300.0) -> None:
    """Poll until `event()` holds; fail saying `what` when `proc` exits first or after limit_s (a
    generous bound: the tests wait for events, not for a time)."""
    deadline = time.monotonic() + limit_s
    while not event():
        if proc is not None and proc.poll() is not None:
            out = proc.communicate()[0] if proc.stdout is not None else ""
            raise AssertionError(f"{what}: the process exited with {proc.returncode}: {out[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {limit_s:g} s")
        time.sleep(0.1)


# Processes started by this test session carry this tag in their environment, so a count of
# leftovers ignores other test runs on the same machine.
TAG = os.environ.setdefault("EDGESPLIT_TEST_TAG", f"{os.getpid()}-{os.urandom(4).hex()}")


def dist_process_count() -> int:
    """Live processes started by the dist backend in this test session: local cloud ranks, and
    zygotes (they fork the ranks) but this process's own, which it keeps for its next dist run."""
    import psutil
    n = 0
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = p.info["cmdline"] or []
        if "edgesplit.backends.remote" not in cmd or os.getpid() in (p.pid, p.info["ppid"]):
            continue
        try:
            n += p.environ().get("EDGESPLIT_TEST_TAG") == TAG
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return n


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the smoke experiment on pooled_units: the train.py tests are about plumbing, not the model
SMOKE = ["experiment=smoke", "pipeline_backend=dist", "compressor=quantize", "data.num_workers=0",
         "pipeline_backend.timeout_s=10", "model._target_=tests.dist_helpers.pooled_units", "model.width=1"]


def train_argv(*overrides: str) -> List[str]:
    """`python train.py` on the smoke experiment with the dist backend."""
    import sys
    return [sys.executable, os.path.join(REPO, "train.py"), *SMOKE, *overrides]


SECRET = "test-secret-0123456789abcdef"  # what the multi-host tests share


def train_env(secret: Optional[str] = SECRET) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO, HYDRA_FULL_ERROR="0")
    env.pop("EDGESPLIT_SECRET", None)
    if secret is not None:
        env["EDGESPLIT_SECRET"] = secret
    return env


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(procs: List["subprocess.Popen[str]"], timeout_s: float = 240) -> List[str]:
    """Each process's output once all have exited 0 (a generous deadline); the rest killed if one
    fails or the deadline passes."""
    outs: List[str] = []
    try:
        outs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs
