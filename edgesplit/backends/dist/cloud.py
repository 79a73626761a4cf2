"""A cloud stage process: its units, optimizer and LR schedule, and the loop serving the edge."""
import os
import shutil
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from edgesplit import checkpoint

from edgesplit.backends.base import peak_memory_bytes
from edgesplit.backends.dist import launch
from edgesplit.backends.dist.link import LinkSpec
from edgesplit.backends.dist.protocol import Header, Kind, pack_object, unpack_object
from edgesplit.backends.dist.schedule import stage_steps
from edgesplit.backends.dist.stage import StageRunner
from edgesplit.backends.dist.transport import EDGE, SendHandle, Transport
from edgesplit.backends.dist.wire import Wire
from edgesplit.errors import PeerError
from edgesplit.schedule import build_optimizer, build_scheduler


def part_name(stage: int, epoch: int) -> str:
    return f"cloud_stage{stage + 1}_epoch{epoch}.pt"


@dataclass
class StageSpec:
    """What a cloud stage process needs: its units by global index, its codecs and the config."""
    stage: int  # 0-based cloud stage; logical rank stage + 1
    stages: int
    units: Dict[int, nn.Module]
    front: Optional[Any]  # BoundaryCodecs of the front boundary (first stage only)
    back: Optional[Any]  # BoundaryCodecs of the back boundary (last stage only)
    cfg: Dict[str, Any]  # the edge's resolved config as a plain container
    device: str = "cpu"


class CloudStage:
    """Serves the edge: train/eval steps micro-batch by micro-batch, then control commands."""

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        self.t: Transport = None  # type: ignore[assignment]  # set by serve()
        self.device = torch.device(spec.device)
        self.rank = spec.stage + 1
        self.last = spec.stage == spec.stages - 1
        self.up, self.down = self.rank - 1, (EDGE if self.last else self.rank + 1)
        b, c = spec.cfg["pipeline_backend"], spec.cfg["compressor"]
        self.units = OrderedDict((str(i), u.to(self.device)) for i, u in sorted(spec.units.items()))
        self.runner = StageRunner(nn.Sequential(self.units), b["checkpoint"], b["chunks"],
                                  b["deferred_batch_norm"])
        eval_compressed = bool(c.get("eval_compressed", True))
        self.in_wire = Wire(spec.front if spec.stage == 0 else None, eval_compressed)
        self.out_wire = Wire(spec.back if self.last else None, eval_compressed)
        self.params = [p for u in self.units.values() for p in u.parameters()]
        self.schedule = OmegaConf.create(spec.cfg["schedule"])  # the LR schedule
        self.schedule_name = b.get("schedule", "gpipe")  # the pipeline schedule
        self.optimizer = build_optimizer(self.params, self.schedule)
        self.scheduler: Optional[LRScheduler] = None
        self.epoch = 0
        self.compute_s, self.steps = 0.0, 0
        self.train_compute_s, self.train_steps = 0.0, 0
        self.sends: List[Tuple[int, SendHandle]] = []

    # -- steps ---------------------------------------------------------------------------------
    def _send(self, dst: int, header: Header, payload: Tensor) -> None:
        self.sends.append((dst, self.t.send(dst, header, payload)))

    def _flush(self) -> None:
        for dst, handle in self.sends:
            self.t.wait_sent([handle], dst)
        self.sends.clear()

    def _to_device(self, x: Tensor) -> Tensor:
        return x.to(self.device) if x.device != self.device else x

    def forward_step(self, first: Header, first_payload: Tensor) -> None:
        """One step, micro-batch by micro-batch in the order of the schedule (schedule.py): the
        forwards, and for a train step the backwards, then the optimizer step."""
        n, train_step, training = first.count, first.kind == Kind.FORWARD, first.training
        self.runner.module.train(training)
        kind = first.kind
        saved: Dict[int, Tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        header, payload = first, first_payload
        compute0 = self.compute_s
        if train_step:
            self.optimizer.zero_grad(set_to_none=True)
        later = self.spec.stages - self.spec.stage  # the cloud stages after this one + the edge
        for op, i in stage_steps(self.schedule_name, n, later, train_step):
            if op == "F":
                if i:
                    header, payload = self.t.recv(self.up, kind, i)
                t0 = time.perf_counter()
                with torch.set_grad_enabled(train_step):
                    x = self._to_device(self.in_wire.decode_activation(payload, training))
                    if train_step:
                        x.requires_grad_(True)
                    y = self.runner(x, i)
                    out = self.out_wire.encode_activation(y, training)
                self.compute_s += time.perf_counter() - t0
                self._send(self.down, Header(kind, i, n, training=training), out)
                if train_step:
                    saved[i] = (x, y, payload, out)
            else:
                _, g = self.t.recv(self.down, Kind.BACKWARD, i)
                t0 = time.perf_counter()
                x, y, p_in, p_out = saved.pop(i)
                y.backward(self._to_device(self.out_wire.decode_gradient(g, p_out)))
                gx = self.in_wire.encode_gradient(x.grad, p_in)
                self.compute_s += time.perf_counter() - t0
                self._send(self.up, Header(Kind.BACKWARD, i, n), gx)
        if train_step:
            t0 = time.perf_counter()
            self.optimizer.step()
            self.compute_s += time.perf_counter() - t0
        self.steps += 1
        if train_step:
            self.train_steps += 1
            self.train_compute_s += self.compute_s - compute0
        self._flush()

    # -- control -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Follow the training loop's schedule: built at the first epoch, stepped once per epoch."""
        if self.scheduler is None:
            self.scheduler = build_scheduler(self.optimizer, self.schedule, epoch)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                for _ in range(epoch - self.epoch):
                    self.scheduler.step()
        self.epoch = epoch
        self.train_compute_s, self.train_steps = 0.0, 0

    def named_parameters(self) -> Dict[str, nn.Parameter]:
        return {f"units.{i}.{n}": p for i, u in self.units.items() for n, p in u.named_parameters()}

    def save(self, directory: str, epoch: int) -> str:
        """Write this stage's part atomically (units by global index, optimizer state by parameter
        name, as edgesplit.checkpoint writes them); drop this stage's parts older than epoch-1."""
        os.makedirs(directory, exist_ok=True)
        name = part_name(self.spec.stage, epoch)
        state = {"units": {int(i): checkpoint.unit_state(u) for i, u in self.units.items()},
                 "optimizer": checkpoint.optimizer_state(self.optimizer, self.named_parameters()),
                 "epoch": epoch, "stage": self.rank}
        checkpoint.atomic_save(state, Path(directory) / name)
        for old in range(max(epoch - 1, 0)):
            path = os.path.join(directory, part_name(self.spec.stage, old))
            if os.path.exists(path):
                os.unlink(path)
        return name

    def load(self, directory: str, name: str) -> None:
        """Load this stage's part of a checkpoint (written by save())."""
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise PeerError(f"cloud rank {self.rank}: checkpoint part {path} is missing")
        part = torch.load(path, map_location="cpu", weights_only=False)
        for index, unit in self.units.items():
            if int(index) not in part["units"]:
                raise PeerError(f"cloud rank {self.rank}: {path} holds no state for layer unit "
                                f"{index}: the checkpoint was written with another partition")
            checkpoint.load_unit(unit, part["units"][int(index)])
        checkpoint.load_optimizer_state(self.optimizer, self.named_parameters(), part["optimizer"])

    def stats(self) -> Dict[str, Any]:
        return {"stage": self.spec.stage + 1, "pid": os.getpid(),
                "parameters": sum(p.numel() for p in self.params),
                "peak_memory_bytes": peak_memory_bytes(self.device),
                "compute_s": self.compute_s, "wait_s": self.t.wait_s, "steps": self.steps,
                "train_compute_s": self.train_compute_s, "train_steps": self.train_steps,
                "link_bytes": dict(self.t.link_bytes)}

    def control(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        op = msg["op"]
        reply: Dict[str, Any] = {"stage": self.spec.stage + 1}
        if op == "epoch":
            self.set_epoch(msg["epoch"])
        elif op == "save":
            reply["part"] = self.save(msg["directory"], msg["epoch"])
        elif op == "load":
            self.load(msg["directory"], msg["parts"][self.spec.stage])
        elif op == "stats":
            reply.update(self.stats())
        elif op != "stop":
            raise PeerError(f"cloud rank {self.rank}: unknown command {op!r} from the edge")
        return reply

    def serve(self, transport: Transport) -> None:
        """Run until the edge says stop; a lost peer raises PeerError."""
        self.t = transport
        while True:
            header, payload = self.t.recv(self.up)
            if header.kind in (Kind.FORWARD, Kind.EVAL):
                self.forward_step(header, payload)
                continue
            if header.kind != Kind.CONTROL:
                raise PeerError(f"cloud rank {self.rank} got {header.kind.name} from "
                                f"{self.t.name(self.up)} between steps: protocol out of sync")
            msg = unpack_object(payload)
            msg["replies"].append(self.control(msg))
            kind = Kind.REPLY if self.last else Kind.CONTROL
            self._send(self.down, Header(kind), pack_object(msg))
            self._flush()
            if msg["op"] == "stop":
                return


def fingerprint(units: Dict[int, nn.Module]) -> List[float]:
    """A few numbers that tell whether two processes built the same initial units."""
    return [float(sum(p.detach().double().sum() for p in units[i].parameters()) or 0.0)
            for i in sorted(units)]


def _serve(world: Any, stage: CloudStage) -> None:
    b = stage.spec.cfg["pipeline_backend"]
    transport = Transport(world.rank, world.global_ranks, world.timeout_s,
                          LinkSpec.from_config(b["link"]), world.diagnose)
    try:
        stage.serve(transport)
    finally:
        transport.close()


def child_main(rank: int, world_size: int, host: str, port: int, spec_bytes: bytes,
               timeout_s: float, threads: int) -> None:
    """Entry of a cloud rank that the edge started on this machine (see __main__.py)."""
    launch.die_with_parent()
    torch.set_num_threads(threads)
    world = None
    try:
        stage = CloudStage(launch.deserialize(spec_bytes))  # ready before it joins
        world = launch.connect_local(rank, world_size, host, port, timeout_s)
        _serve(world, stage)
    except BaseException as e:
        launch.fail(world, rank, e)
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def build_spec(cfg: Any, stage: int, expected: List[float]) -> StageSpec:
    """A cloud stage built from the edge's config alone (multi-host): same seed, same units."""
    from edgesplit.compression import build_codecs
    from edgesplit.model import build_units
    from edgesplit.partition import split_units

    conf = OmegaConf.create(cfg)
    torch.manual_seed(conf.seed)
    units = build_units(conf.model)
    split = split_units(units, conf.partition.front, conf.partition.back,
                        conf.partition.cloud_stages)
    mine = {i: units[i] for i in split.cloud_range(stage)}
    if fingerprint(mine) != expected:
        raise PeerError(f"cloud rank {stage + 1} built other initial weights than the edge for "
                        f"units {sorted(mine)}: the hosts run different code or seeding")
    codecs = build_codecs(conf.compressor)
    stages = len(split.cloud_bounds) - 1
    from edgesplit.backends.stages import resolve_devices
    device = resolve_devices(conf.pipeline_backend.devices, stages + 2)[stage + 1]
    return StageSpec(stage, stages, mine, codecs["front"] if stage == 0 else None,
                     codecs["back"] if stage == stages - 1 else None, cfg, str(device))


def drop_output_dir(path: Optional[str]) -> None:
    """Remove the output dir that Hydra made for a cloud process, if it holds only Hydra's own
    files (.hydra/, *.log): the edge writes the run dir."""
    if not path or not os.path.isdir(path):
        return
    if all(name == ".hydra" or name.endswith(".log") for name in os.listdir(path)):
        shutil.rmtree(path, ignore_errors=True)


def run_cloud(cfg: Any, hydra_output_dir: Optional[str] = None) -> None:
    """The cloud role on its own host (pipeline_backend.role=cloud): join the edge, take its
    config, serve until it stops. Raises PeerError when the edge is lost."""
    drop_output_dir(hydra_output_dir)
    b = cfg.pipeline_backend
    stages = int(cfg.partition.cloud_stages)
    threads = launch.threads_per_rank(int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                      cfg.get("threads"))
    torch.set_num_threads(threads)
    world = None
    try:
        if launch.under_torchrun():
            world = launch.start_torchrun("cloud", stages, float(b.timeout_s))
        else:
            world = launch.start_by_role("cloud", stages, b.master_addr, int(b.master_port),
                                         float(b.timeout_s))
        t = Transport(world.rank, world.global_ranks, world.timeout_s, LinkSpec(), world.diagnose)
        _, payload = t.recv(EDGE, Kind.CONTROL)
        init = unpack_object(payload)
        t.close()
        _serve(world, CloudStage(build_spec(init["cfg"], world.rank - 1, init["fingerprint"])))
    except BaseException as e:
        if world is not None:
            world.report_error(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
