"""The edge process of the remote backend (`pipeline_backend=dist`): front and back units, loss,
the order of steps, and the cloud stages' control (epochs, stats, state)."""
from dataclasses import replace
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from edgesplit.assemble import DistSpec, RunParts, RunSpec
from edgesplit.run import checkpoint
from edgesplit.backends.base import Backend, StepResult, named_unit_parameters
from edgesplit.run.memory import peak_memory_bytes
from edgesplit.backends.remote import auth, launch
from edgesplit.backends.remote.link import LinkSpec
from edgesplit.backends.remote.order import edge_steps
from edgesplit.backends.remote.ports import Inputs, LinkIn, LinkOut, Loss, StepInfo
from edgesplit.backends.remote.protocol import Command, Header, Kind, Op, pack_state, unpack_state
from edgesplit.backends.remote.runner import StageRunner
from edgesplit.backends.remote.spec import StageSpec
from edgesplit.backends.remote.stage import Stage, run_steps
from edgesplit.backends.remote.transport import EDGE, Transport
from edgesplit.backends.partitions import resolve_devices
from edgesplit.boundary.meter import CommMeter
from edgesplit.errors import ConfigError
from edgesplit.model.partition import Split
from edgesplit.logs.summary import SideStats


def state_for(state: Dict[str, Any], indices: Iterable[int]) -> Dict[str, Any]:
    """What one process loads of a checkpoint: its units' state and parameters (by index), and the
    per-process slots, which are small."""
    indices = list(indices)
    prefixes = tuple(f"units.{i}." for i in indices)
    return {"units": {i: state["units"][i] for i in indices},
            "optimizer": {k: v for k, v in state["optimizer"].items() if k.startswith(prefixes)},
            **{k: state.get(k) or {} for k in checkpoint.PER_PROCESS}}


class RemoteBackend(Backend):
    """The edge side; the cloud stages run in their own processes (cloud.py, launched by launch.py)."""

    name = "dist"

    def __init__(self, parts: RunParts, meter: CommMeter) -> None:
        spec, split, b = parts.spec, parts.split, parts.spec.pipeline.dist
        if b is None:
            raise ConfigError(f"pipeline_backend._target_={parts.spec.pipeline.target!r} needs the dist "
                              f"keys (link, timeout_s, order, role): use pipeline_backend=dist")
        if b.role == "cloud":
            raise ConfigError("pipeline_backend.role=cloud serves an edge (train.py does so by "
                              "itself); it does not run the training loop")
        self.meter, self.split, self.order = meter, split, b.order
        self.stages = len(split.cloud_bounds) - 1
        self.chunks, self.timeout_s = spec.pipeline.chunks, b.timeout_s
        devices = resolve_devices(spec.pipeline.devices, self.stages + 2)
        self._build_side(spec, split, devices[0], b.edge_slowdown)
        self.world = self._launch(spec, b, split, [str(d) for d in devices[1:-1]])
        self._attach(Transport(EDGE, self.world.global_ranks, self.timeout_s, self.world.sealer,
                               LinkSpec.of_mbps(b.up_mbps, b.down_mbps, b.latency_ms), self.world.diagnose),
                     1, self.stages)
        try:
            if not self.world.children:  # across hosts: the cloud processes take the edge's config
                for stage in self._specs(spec, b, split, [str(d) for d in devices[1:-1]]):
                    text = torch.frombuffer(bytearray(stage.to_json().encode()), dtype=torch.uint8)
                    self.t.wait_sent([self.t.send(stage.rank, Header(Kind.CONTROL), text)], stage.rank)
            self.healthy = True
            # the cloud's units start from the edge's: one initialisation, wherever it came from
            cloud = {i: split.units[i] for i in split.cloud_indices}
            self._load_cloud({"units": {i: checkpoint.unit_state(u) for i, u in cloud.items()},
                              "optimizer": {}})
        except BaseException:
            self.close()
            raise

    def _build_side(self, spec: RunSpec, split: Split, device: torch.device, slowdown: float) -> None:
        """The edge's units (front and back) on `device`, its boundaries, runners and optimizer."""
        self.device = device
        self._units = {i: split.units[i].to(self.device) for i in split.edge_indices}
        codecs = spec.codecs.build()
        self.boundaries = [spec.boundary(name, codecs, self.meter) for name in ("front", "back")]
        self.precision = precision = spec.precision
        mode, dbn = spec.pipeline.checkpoint, spec.pipeline.deferred_batch_norm
        front = precision.partition(split.edge_front, self.device)
        self.nopeek = spec.defenses.front(front)  # privacy.nopeek_weight's loss term, or None
        self.front = StageRunner(self.nopeek or front, mode, self.chunks, dbn)
        self.back = StageRunner(precision.partition(split.edge_back, self.device), mode,
                                self.chunks, dbn)
        self.optimization = spec.optimization(named_unit_parameters(self._units), self.device)
        self.healthy, self.closed = False, False
        self.compute_s, self.steps = 0.0, 0
        self.edge_slowdown = slowdown

    def _attach(self, transport: Transport, first: int, last: int) -> None:
        """The link to the cloud: activations go to logical rank `first`, come back from `last`."""
        self.t = transport
        carry_ids = any(b.needs_ids for b in self.boundaries)
        self.to_cloud = LinkOut(self.t, first, self.boundaries[0], self.device, carry_ids)
        self.from_cloud = LinkIn(self.t, last, self.boundaries[1], self.device, carry_ids)

    def _specs(self, spec: RunSpec, b: DistSpec, split: Split, devices: List[str]) -> List[StageSpec]:
        # the secret is never on the wire: each host has its own copy
        run = replace(spec, pipeline=replace(spec.pipeline, dist=replace(b, secret=None, secret_file=None)))
        return [StageSpec(s, self.stages, list(split.cloud_range(s)), devices[s], run)
                for s in range(self.stages)]

    def _launch(self, spec: RunSpec, b: DistSpec, split: Split, devices: List[str]) -> launch.World:
        local = b.role is None and not launch.under_torchrun()
        secret = auth.resolve_secret(b.secret, local, b.secret_file)
        # Local ranks share this host's cores: the cloud stages, which hold most of the compute,
        # split all of them; the edge (a few units, mostly waiting on the link) takes its share.
        torch.set_num_threads(launch.threads_per_rank(self.stages + 1 if local else 1, spec.threads))
        if local:
            specs = [stage.to_json() for stage in self._specs(spec, b, split, devices)]
            return launch.start_local(self.stages, specs, secret, self.timeout_s,
                                      launch.threads_per_rank(self.stages, spec.threads))
        if launch.under_torchrun():
            return launch.start_torchrun("edge", self.stages, secret, self.timeout_s)
        return launch.start_by_role("edge", self.stages, b.master_addr, b.master_port,
                                    secret, self.timeout_s)

    # -- steps ---------------------------------------------------------------------------------
    def local_units(self) -> Dict[int, nn.Module]:
        return dict(self._units)

    def train(self, mode: bool = True) -> None:
        """The edge's units now; the cloud's with the next step (its headers carry the mode)."""
        self.front.module.train(mode)
        self.back.module.train(mode)
        for b in self.boundaries:
            b.training = mode

    def _guard(self, fn: Any, *args: Any) -> Any:
        if not self.healthy:
            raise RuntimeError("the dist backend is closed or lost a peer")
        try:
            return fn(*args)
        except BaseException:
            self.healthy = False
            raise

    def train_step(self, x: Tensor, y: Tensor, ids: Tensor) -> StepResult:
        return self._guard(self._step, x, y, ids, True)

    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        with torch.no_grad():
            return self._guard(self._step, x, y, None, False)

    def _step(self, x: Tensor, y: Tensor, ids: Optional[Tensor], train: bool) -> StepResult:
        """One step in the order of edge_steps; sends never block."""
        x, y = self.precision.input(x.to(self.device)), y.to(self.device)
        xs, ys = list(x.chunk(self.chunks)), list(y.chunk(self.chunks))
        id_chunks: List[Optional[Tensor]] = (list(ids.chunk(self.chunks)) if ids is not None
                                             else [None] * len(xs))
        info = StepInfo(len(xs), train, self.front.module.training)
        loss = Loss(ys, self.optimization.scaling.scale)
        stages = {"front": Stage(self.front, Inputs(xs, id_chunks), self.to_cloud),
                  "back": Stage(self.back, self.from_cloud, loss)}
        for stage in stages.values():
            stage.begin(info)
        if train:
            for b in self.boundaries:  # the ids stay here: the back's gradient defense keys by them
                b.new_step([i for i in id_chunks if i is not None])
            if self.nopeek is not None:
                self.nopeek.begin_step(x.shape[0], self.optimization.scaling.value)
            self.optimization.zero_grad()
        steps = [(stages[part], op, i) for part, op, i in edge_steps(self.order, info.count,
                                                                     self.stages, train)]
        compute = run_steps(steps, self.t, self.edge_slowdown)
        self.to_cloud.flush()
        self.from_cloud.flush()
        stepped = True
        if train:
            stepped = self.optimization.step(self._overflow())
            self.to_cloud.flush()
            self.compute_s += compute
            self.steps += 1
            self.meter.end_batch()
        return StepResult.of(torch.cat([loss.logits[i] for i in range(info.count)]), y, loss.mean(),
                             skipped=not stepped)

    def _overflow(self) -> bool:
        """fp16: the run's one decision for this step, skip (True) or step. A gradient overflowed
        on the edge (or a boundary's flag) or on a cloud stage: every stage reports, behind its
        gradients, whether it or one after it did; the edge decides and tells them all."""
        if not self.precision.scaled:
            return False
        mine = self.optimization.overflow([f for b in self.boundaries for f in b.overflows()])
        skip = self.to_cloud.receive_overflow() or mine
        self.to_cloud.send_decision(skip)
        return skip

    # -- control -------------------------------------------------------------------------------
    def _control(self, command: Command, blobs: Optional[List[bytes]] = None) -> Tuple[Command, List[bytes]]:
        """Send a command through the cloud stages in order; the last one answers for all."""
        def go() -> Tuple[Command, List[bytes]]:
            self.t.wait_sent([self.t.send(1, Header(Kind.CONTROL), command.pack(blobs))], 1)
            _, payload = self.t.recv(self.stages, Kind.REPLY)
            with self.t.decoding(self.stages, f"reply to {command.op.value}"):
                return Command.unpack(payload)
        return self._guard(go)

    def start_epoch(self, epoch: int) -> None:
        self.optimization.start_epoch(epoch)
        for b in self.boundaries:
            b.start_epoch(epoch)
        self.compute_s, self.steps = 0.0, 0
        self._control(Command(Op.EPOCH, epoch))

    @property
    def lr(self) -> float:
        return self.optimization.lr

    def edge_stats(self) -> SideStats:
        return SideStats(parameters=sum(p.numel() for u in self._units.values() for p in u.parameters()),
                         peak_memory_bytes=peak_memory_bytes(self.device),
                         compute_s_per_batch=self.compute_s / max(self.steps, 1),
                         codec_state_bytes=sum(b.state_bytes() for b in self.boundaries))

    def side_stats(self) -> Dict[str, SideStats]:
        """The edge's stats, and each cloud stage's; the cloud's payload counts and codec
        figures (of what it sent) join this run's meter."""
        reply, _ = self._control(Command(Op.STATS))
        out = {"edge": self.edge_stats()}
        with self.t.decoding(self.stages, "reply to stats"):
            for r in reply.replies:
                assert r.side is not None and r.meter is not None, "a stage's stats are missing"
                out[f"cloud_stage{r.stage}"] = SideStats.from_dict(r.side)
                self.meter.merge(r.meter)
            stages = [out[f"cloud_stage{s + 1}"] for s in range(self.stages)]
        out["cloud"] = SideStats(parameters=sum(s.parameters for s in stages),
                                 peak_memory_bytes=max(s.peak_memory_bytes for s in stages),
                                 compute_s_per_batch=sum(s.compute_s_per_batch for s in stages),
                                 processes=len(stages),
                                 codec_state_bytes=sum(s.codec_state_bytes for s in stages))
        return out

    def state_dict(self) -> Dict[str, Any]:
        """The edge's part and every cloud stage's, which travel to the edge: one checkpoint
        on the edge's disk, across hosts too."""
        _, blobs = self._control(Command(Op.SAVE))
        with self.t.decoding(self.stages, "checkpoint part"):
            if len(blobs) != self.stages:
                raise ValueError(f"{len(blobs)} state blobs for {self.stages} cloud stages")
            parts = [unpack_state(blob) for blob in blobs]
            return checkpoint.merge([checkpoint.part(checkpoint.EDGE_PROCESS, self._units,
                                                     self.optimization, self.boundaries), *parts])

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        missing = [i for i in range(self.split.num_units) if i not in state["units"]]
        if missing:
            raise checkpoint.CheckpointError(f"the checkpoint holds no state for layer units "
                                             f"{missing}: it was written for another model")
        checkpoint.load_part(state, checkpoint.EDGE_PROCESS, self._units, self.optimization,
                             self.boundaries)
        self._load_cloud(state)

    def _load_cloud(self, state: Dict[str, Any]) -> None:
        """Each cloud stage gets the state of its own units and parameters (and the per-process
        slots, which are small)."""
        blobs = [pack_state(state_for(state, self.split.cloud_range(s))) for s in range(self.stages)]
        self._control(Command(Op.LOAD), blobs)

    def close(self) -> None:
        """Stop the cloud ranks (politely if healthy), reap the children, free the group."""
        if self.closed:
            return
        self.closed = True
        world = getattr(self, "world", None)
        try:
            if self.healthy:
                try:
                    self._control(Command(Op.STOP))
                except Exception:
                    pass
            self.healthy = False
        finally:
            if world is not None:
                launch.stop_children(world.children, grace_s=5.0 if world.children else 0)
            if hasattr(self, "t"):
                self.t.close()
            if dist.is_initialized():
                dist.destroy_process_group()
