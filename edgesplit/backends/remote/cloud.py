"""A cloud stage process: its units and optimizer, serving the edge's steps and control messages."""
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from edgesplit.run import checkpoint
from edgesplit.backends.base import named_unit_parameters
from edgesplit.run.memory import peak_memory_bytes
from edgesplit.backends.remote.order import stage_steps
from edgesplit.backends.remote.progress import Heartbeat
from edgesplit.backends.remote.ports import LinkIn, LinkOut, StepInfo
from edgesplit.backends.remote.protocol import (Command, Header, Kind, Op, Reply, pack_state,
                                                unpack_state)
from edgesplit.backends.remote.runner import StageRunner
from edgesplit.backends.remote.spec import StageSpec
from edgesplit.backends.remote.stage import Stage, run_steps
from edgesplit.backends.remote.transport import EDGE, Transport
from edgesplit.boundary.boundary import Boundary
from edgesplit.boundary.meter import CommMeter
from edgesplit.errors import PeerError
from edgesplit.logs.summary import SideStats
from edgesplit.run.lr_schedule import Optimization


class CloudStage:
    """Cloud stage `spec.stage`: between the stage before (or the edge) and the stage after (or
    the edge); it counts and measures what it sends on the edge link in its own meter. Many edges
    (edgesplit.clients.dist): one per client, at the edge rank `edge`, over `units` and with the
    `optimization` that clients sharing a cloud part share, counting into that client's `meter`."""

    def __init__(self, spec: StageSpec, transport: Transport, heartbeat: Optional[Heartbeat] = None,
                 edge: int = EDGE, units: Optional[Dict[int, nn.Module]] = None,
                 optimization: Optional[Optimization] = None, meter: Optional[CommMeter] = None) -> None:
        run, b = spec.run, spec.run.pipeline
        self.heartbeat, self.epoch = heartbeat, 0
        self.spec, self.t, self.device = spec, transport, torch.device(spec.device)
        self.process = f"cloud_stage{spec.rank}"
        self.units = {i: u.to(self.device) for i, u in (units or spec.build_units()).items()}
        self.meter = meter or CommMeter()
        codecs = run.codecs.build()
        self.inbound = (run.boundary("front", codecs, self.meter) if spec.stage == 0
                        else Boundary.raw(f"stage{spec.rank - 1}"))
        self.outbound = (run.boundary("back", codecs, self.meter) if spec.last
                         else Boundary.raw(f"stage{spec.rank}"))
        # the edge link's codecs decide, on every link: the ids pass through the cloud stages
        carry_ids = any(c.needs_ids for c in codecs.values())
        self.boundaries = [bd for bd in (self.inbound, self.outbound) if bd.meter is not None]
        self.precision = precision = run.precision
        for bd in (self.inbound, self.outbound):  # the links between cloud stages too
            bd.loss_scaled, bd.channels_last = precision.scaled, precision.channels_last
        module = nn.Sequential(OrderedDict((str(i), u) for i, u in sorted(self.units.items())))
        runner = StageRunner(precision.partition(module, self.device), b.checkpoint, b.chunks,
                             b.deferred_batch_norm)
        self.up = edge if spec.stage == 0 else spec.rank - 1
        self.down = edge if spec.last else spec.rank + 1
        self.source = LinkIn(transport, self.up, self.inbound, self.device, carry_ids)
        self.sink = LinkOut(transport, self.down, self.outbound, self.device, carry_ids)
        self.stage = Stage(runner, self.source, self.sink)
        self.order = b.dist.order if b.dist is not None else "gpipe"
        self.optimization = optimization or run.optimization(named_unit_parameters(self.units), self.device)
        self.compute_s, self.steps = 0.0, 0

    # -- steps ---------------------------------------------------------------------------------
    def step(self, first: Header, payload: Tensor) -> None:
        """One step whose first micro-batch arrived: the order's forwards (and backwards), then
        the optimizer step."""
        info = StepInfo(first.count, first.kind == Kind.FORWARD, first.training)
        self.stage.module.train(info.training)
        for b in (self.inbound, self.outbound):
            b.training = info.training
            if info.train:
                b.new_step()
        self.stage.begin(info)
        self.source.prime(first, payload)
        later = self.spec.stages - self.spec.stage  # the cloud stages after this one + the edge
        steps = [(self.stage, op, i) for op, i in stage_steps(self.order, info.count, later, info.train)]
        if info.train:
            self.optimization.zero_grad()
        compute = run_steps(steps, self.t)
        if info.train:
            self.optimization.step(self._overflow())
            self.compute_s += compute
            self.steps += 1
            if self.heartbeat is not None:
                self.heartbeat.step(self.epoch)
        self.source.flush()
        self.sink.flush()

    def _overflow(self) -> bool:
        """fp16: report whether a gradient here or in a later stage overflowed (behind the step's
        gradients, toward the edge); return the edge's decision, passed on to the later stages."""
        if not self.precision.scaled:
            return False
        flags = [f for b in (self.inbound, self.outbound) for f in b.overflows()]
        mine = self.optimization.overflow(flags)
        if not self.spec.last:
            mine = self.sink.receive_overflow() or mine
        self.source.report_overflow(mine)
        skip = self.source.receive_decision()
        if not self.spec.last:
            self.sink.send_decision(skip)
        return skip

    def side_stats(self) -> SideStats:
        return SideStats(parameters=sum(p.numel() for u in self.units.values() for p in u.parameters()),
                         peak_memory_bytes=peak_memory_bytes(self.device),
                         compute_s_per_batch=self.compute_s / max(self.steps, 1),
                         codec_state_bytes=sum(b.state_bytes() for b in self.boundaries))

    # -- control -------------------------------------------------------------------------------
    def control(self, command: Command, blobs: List[bytes]) -> Optional[bytes]:
        """Carry out a command; returns the blob this stage adds (SAVE) and consumes its own
        blob (LOAD: the first)."""
        reply = Reply(stage=self.spec.rank)
        out = None
        if command.op == Op.EPOCH:
            self.epoch = command.epoch
            self.optimization.start_epoch(command.epoch)
            for b in self.boundaries:
                b.start_epoch(command.epoch)
            self.meter.reset()
            self.compute_s, self.steps = 0.0, 0
        elif command.op == Op.STATS:
            reply.side, reply.meter = self.side_stats().to_dict(), self.meter.state()
        elif command.op == Op.SAVE:
            out = pack_state(checkpoint.part(self.process, self.units, self.optimization,
                                             self.boundaries))
        elif command.op == Op.LOAD:
            if not blobs:
                raise PeerError(f"cloud rank {self.spec.rank}: a load command without its state")
            with self.t.decoding(self.up, "state to load"):
                checkpoint.load_part(unpack_state(blobs.pop(0)), self.process, self.units,
                                     self.optimization, self.boundaries)
        command.replies.append(reply)
        return out

    def serve(self) -> None:
        """Run until the edge says stop; a lost peer raises PeerError."""
        while True:
            header, payload = self.t.recv(self.up)
            if header.kind in (Kind.FORWARD, Kind.EVAL):
                self.step(header, payload)
                continue
            if header.kind != Kind.CONTROL:
                raise PeerError(f"cloud rank {self.spec.rank} got {header.kind.name} from "
                                f"{self.t.name(self.up)} between steps: protocol out of sync")
            with self.t.decoding(self.up, "control message"):
                command, blobs = Command.unpack(payload)
            added = self.control(command, blobs)
            if added is not None:
                blobs.append(added)
            kind = Kind.REPLY if self.spec.last else Kind.CONTROL
            self.t.wait_sent([self.t.send(self.down, Header(kind), command.pack(blobs))], self.down)
            if command.op == Op.STOP:
                return
