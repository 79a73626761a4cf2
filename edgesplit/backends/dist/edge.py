"""The edge process of the dist backend: front and back units, loss, metrics, the schedule."""
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from edgesplit.backends.base import Backend, StepResult
from edgesplit.backends.dist import launch
from edgesplit.backends.base import peak_memory_bytes
from edgesplit.backends.dist.cloud import StageSpec, fingerprint
from edgesplit.backends.dist.link import LinkSpec
from edgesplit.backends.dist.protocol import (HEADER_BYTES, Header, Kind, command, pack_object,
                                              unpack_object)
from edgesplit.backends.dist.schedule import SCHEDULES, edge_steps
from edgesplit.backends.dist.stage import StageRunner
from edgesplit.backends.dist.transport import EDGE, SendHandle, Transport
from edgesplit.backends.dist.wire import Wire
from edgesplit.backends.stages import resolve_devices
from edgesplit.boundary import _quality
from edgesplit.comm import CommMeter
from edgesplit.errors import ConfigError
from edgesplit.partition import Split


class DistBackend(Backend):
    """The edge side; the cloud stages run in their own processes (see cloud.py, launch.py)."""

    name = "dist"

    def __init__(self, cfg: DictConfig, split: Split, codecs: Dict[str, Any],
                 meter: CommMeter) -> None:
        b = cfg.pipeline_backend
        self.schedule = b.get("schedule", "gpipe")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"pipeline_backend.schedule={self.schedule!r}: allowed "
                              f"{', '.join(SCHEDULES)}")
        if b.get("role") == "cloud":
            raise ConfigError("pipeline_backend.role=cloud runs edgesplit.backends.dist.run_cloud, "
                              "not the training loop (train.py does this by itself)")
        self.cfg, self.meter, self.split = cfg, meter, split
        self.stages = len(split.cloud_bounds) - 1
        self.chunks, self.timeout_s = int(b.chunks), float(b.timeout_s)
        devices = resolve_devices(b.devices, self.stages + 2)
        self.device = devices[0]
        self._units = {i: split.units[i].to(self.device) for i in split.edge_indices}
        mode, dbn = b.checkpoint, bool(b.deferred_batch_norm)
        self.front = StageRunner(split.edge_front, mode, self.chunks, dbn)
        self.back = StageRunner(split.edge_back, mode, self.chunks, dbn)
        eval_compressed = bool(cfg.compressor.get("eval_compressed", True))
        self.front_wire = Wire(codecs["front"], eval_compressed)
        self.back_wire = Wire(codecs["back"], eval_compressed)
        self.first, self.last = 1, self.stages
        self.healthy, self.closed = False, False
        self.compute_s, self.steps = 0.0, 0
        container = OmegaConf.to_container(cfg, resolve=True)
        local = b.get("role") is None and not launch.under_torchrun()
        # Local ranks share this host's cores: the cloud stages, which hold most of the compute,
        # split all of them; the edge (a few units, mostly waiting on the link) takes its share.
        torch.set_num_threads(launch.threads_per_rank(self.stages + 1 if local else 1, cfg.get("threads")))
        cloud_threads = launch.threads_per_rank(self.stages, cfg.get("threads"))
        if local:
            specs = [launch.serialize(StageSpec(
                s, self.stages, {i: split.units[i] for i in split.cloud_range(s)},
                codecs["front"] if s == 0 else None,
                codecs["back"] if s == self.stages - 1 else None,
                container, str(devices[s + 1]))) for s in range(self.stages)]
            self.world = launch.start_local(self.stages, specs, self.timeout_s, cloud_threads)
        elif launch.under_torchrun():
            self.world = launch.start_torchrun("edge", self.stages, self.timeout_s)
        else:
            self.world = launch.start_by_role("edge", self.stages, b.master_addr,
                                              int(b.master_port), self.timeout_s)
        self.t = Transport(EDGE, self.world.global_ranks, self.timeout_s,
                           LinkSpec.from_config(b.link), self.world.diagnose)
        try:
            if not local:  # the cloud processes run the edge's config and check their weights
                for s in range(self.stages):
                    units = {i: split.units[i] for i in split.cloud_range(s)}
                    init = {"cfg": container, "stage": s, "fingerprint": fingerprint(units)}
                    self.t.wait_sent([self.t.send(s + 1, Header(Kind.CONTROL), pack_object(init))],
                                     s + 1)
            self.healthy = True
        except BaseException:
            self.close()
            raise
        self._pending_load: Optional[Tuple[str, List[str]]] = None

    # -- Backend -------------------------------------------------------------------------------
    def local_units(self) -> Dict[int, nn.Module]:
        return dict(self._units)

    def train(self, mode: bool = True) -> None:
        """The edge's units now; the cloud's with the next step (its headers carry the mode)."""
        self.front.module.train(mode)
        self.back.module.train(mode)

    def _guard(self, fn: Any, *args: Any) -> Any:
        if not self.healthy:
            raise RuntimeError("the dist backend is closed or lost a peer")
        try:
            return fn(*args)
        except BaseException:
            self.healthy = False
            raise

    def train_step(self, x: Tensor, y: Tensor) -> StepResult:
        return self._guard(self._step, x, y, True)

    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        with torch.no_grad():
            return self._guard(self._step, x, y, False)

    def _record(self, boundary: str, pass_: str, payload: Tensor, x: Tensor,
                training: bool) -> None:
        """Bytes of one message on the edge link, header included (only in training mode, as the
        in-process backends' boundaries count)."""
        if training:
            self.meter.record(boundary, pass_, HEADER_BYTES + payload.numel(), 4 * x.numel())

    def _quality(self, boundary: str, pass_: str, wire: Wire, x: Tensor, payload: Tensor,
                 decoded: Optional[Tensor] = None) -> None:
        """Codec quality of the first micro-batch of what the edge encodes (front forward, back
        backward); the cloud encodes the other two, which are not measured."""
        if decoded is None:
            decoded = wire.decode_activation(payload, True)
        self.meter.record_quality(boundary, pass_, *_quality(x, decoded))

    def _step(self, x: Tensor, y: Tensor, train_step: bool) -> StepResult:
        """One step in the order of the schedule (schedule.edge_steps); sends never block."""
        x, y = x.to(self.device), y.to(self.device)
        xs, ys, batch = x.chunk(self.chunks), y.chunk(self.chunks), x.shape[0]
        n, training = len(xs), self.front.module.training
        kind = Kind.FORWARD if train_step else Kind.EVAL
        sends: Dict[int, List[SendHandle]] = {self.first: [], self.last: []}
        fronts: Dict[int, Tuple[Tensor, Tensor]] = {}
        backs: Dict[int, Tuple[Tensor, Tensor, Tensor]] = {}
        logits: Dict[int, Tensor] = {}
        losses: Dict[int, Tensor] = {}
        t0 = time.perf_counter()
        for part, op, i in edge_steps(self.schedule, n, self.stages, train_step):
            if part == "front" and op == "F":
                h = self.front(xs[i], i)
                p = self.front_wire.encode_activation(h, training)
                header = Header(kind, i, n, training=training)
                sends[self.first].append(self.t.send(self.first, header, p))
                self._record("front", "forward", p, h, training)
                if train_step and i == 0 and self.front_wire.compressed(training):
                    self._quality("front", "forward", self.front_wire, h, p)
                fronts[i] = (h, p)
            elif part == "back" and op == "F":
                wait0 = self.t.wait_s
                _, q = self.t.recv(self.last, kind, i)
                t0 += self.t.wait_s - wait0  # time blocked is not compute
                z = self.back_wire.decode_activation(q, training).to(self.device)
                if train_step:
                    z.requires_grad_(True)
                out = self.back(z, i)
                loss = F.cross_entropy(out, ys[i])
                self._record("back", "forward", q, z, training)
                logits[i], losses[i] = out.detach(), loss.detach()
                backs[i] = (z, q, loss)
            elif part == "back":
                # each micro-batch's loss scaled by its share of the batch: the whole batch's loss
                z, q, loss = backs.pop(i)
                (loss * (ys[i].numel() / batch)).backward()
                g = self.back_wire.encode_gradient(z.grad, q)
                sends[self.last].append(self.t.send(self.last, Header(Kind.BACKWARD, i, n), g))
                self._record("back", "backward", g, z, training)
                if i == n - 1 and self.back_wire.codecs is not None:
                    self._quality("back", "backward", self.back_wire, z.grad, g,
                                  self.back_wire.decode_gradient(g, q))
            else:
                h, p = fronts.pop(i)
                wait0 = self.t.wait_s
                _, r = self.t.recv(self.first, Kind.BACKWARD, i)
                t0 += self.t.wait_s - wait0
                h.backward(self.front_wire.decode_gradient(r, p).to(self.device))
                self._record("front", "backward", r, h, training)
        compute = time.perf_counter() - t0
        for dst, handles in sends.items():
            self.t.wait_sent(handles, dst)
        loss_sum = sum(losses[i] * (yi.numel() / batch) for i, yi in enumerate(ys))
        if train_step:
            self.compute_s += compute
            self.steps += 1
            self.meter.end_batch()
        return StepResult.of(torch.cat([logits[i] for i in range(n)]), y, loss_sum)

    def reset_stats(self) -> None:
        """Start the per-batch compute averages afresh (the cloud's restart at each epoch)."""
        self.compute_s, self.steps = 0.0, 0

    # -- control -------------------------------------------------------------------------------
    def _control(self, msg: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Send a command through the cloud stages in order; the last one answers for all."""
        self.t.wait_sent([self.t.send(self.first, Header(Kind.CONTROL), pack_object(msg))],
                         self.first)
        _, payload = self.t.recv(self.last, Kind.REPLY)
        return unpack_object(payload)["replies"]

    def on_epoch_start(self, epoch: int) -> None:
        if self._pending_load is not None:
            directory, parts = self._pending_load
            self._guard(self._control, command("load", directory=directory, parts=parts))
            self._pending_load = None
        self._guard(self._control, command("epoch", epoch=epoch))

    def save_remote(self, directory: str, epoch: int) -> List[str]:
        replies = self._guard(self._control, command("save", directory=directory, epoch=epoch))
        return [r["part"] for r in replies]

    def load_remote(self, directory: str, parts: List[str]) -> None:
        """Have each cloud stage load its part (a checkpoint's `parts`) before the next epoch."""
        if len(parts) != self.stages:
            raise ConfigError(f"the checkpoint in {directory} has {len(parts)} cloud parts but "
                              f"partition.cloud_stages={self.stages}")
        self._pending_load = (directory, list(parts))

    def side_stats(self) -> Dict[str, Dict[str, float]]:
        edge = {"parameters": float(sum(p.numel() for p in self.parameters())),
                "peak_memory_bytes": float(peak_memory_bytes(self.device)),
                "compute_s_per_batch": self.compute_s / max(self.steps, 1),
                "link_up_bytes": float(self.t.link_bytes["up"]),
                "link_down_bytes": float(self.t.link_bytes["down"])}
        if not self.healthy:
            return {"edge": edge}
        replies = self._guard(self._control, command("stats"))
        cloud = {"parameters": float(sum(r["parameters"] for r in replies)),
                 "peak_memory_bytes": float(max(r["peak_memory_bytes"] for r in replies)),
                 "compute_s_per_batch": sum(r["train_compute_s"] / max(r["train_steps"], 1)
                                            for r in replies),
                 "processes": float(len(replies))}
        out = {"edge": edge, "cloud": cloud}
        for r in replies:
            out[f"cloud_stage{r['stage']}"] = {
                "parameters": float(r["parameters"]),
                "peak_memory_bytes": float(r["peak_memory_bytes"]),
                "compute_s_per_batch": r["train_compute_s"] / max(r["train_steps"], 1)}
        return out

    def close(self) -> None:
        """Stop the cloud ranks (politely if healthy), reap the children, free the group."""
        if self.closed:
            return
        self.closed = True
        world = getattr(self, "world", None)
        try:
            if self.healthy:
                try:
                    self._control(command("stop"))
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
