"""The cloud's side of one client's edge process in a many-edge dist run (edgesplit.clients.dist):
its cloud stage (its boundaries and codec state, over the cloud part it trains against), the meter
of its link, and the commands the cloud sends it."""
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from edgesplit.backends.base import StepResult
from edgesplit.backends.remote.cloud import CloudStage
from edgesplit.backends.remote.edge import state_for
from edgesplit.backends.remote.protocol import Command, Header, Kind, Op, Reply, pack_state, unpack_state
from edgesplit.backends.remote.transport import Transport
from edgesplit.boundary.meter import CommMeter
from edgesplit.logs.summary import SideStats
from edgesplit.run import checkpoint


@dataclass
class Clock:
    """A client's compute seconds of the epoch by side, as the in-process pipelines' clock."""
    seconds: Dict[str, float] = field(default_factory=dict)


class RemoteClient:
    """The cloud's side of client k (edge rank k + 1): its cloud stage (its boundaries and codec
    state, over the cloud part it trains against), the meter of its link, its commands."""

    def __init__(self, index: int, t: Transport, stage: CloudStage, meter: CommMeter) -> None:
        self.index, self.rank, self.t, self.stage, self.meter = index, index + 1, t, stage, meter
        self.clock, self.steps = Clock(), 0
        self._stats: Optional[Dict[str, SideStats]] = None

    def serve(self, command: Command, blobs: Optional[List[bytes]] = None) -> Tuple[Reply, List[bytes]]:
        """Send the edge a command and serve the steps it runs against the cloud (a train or eval
        step's micro-batches) until its reply."""
        self.t.wait_sent([self.t.send(self.rank, Header(Kind.CONTROL), command.pack(blobs))], self.rank)
        while True:
            header, payload = self.t.recv(self.rank)
            if header.kind in (Kind.FORWARD, Kind.EVAL):
                self.stage.step(header, payload)
                continue
            with self.t.decoding(self.rank, f"reply to {command.op.value}"):
                if header.kind != Kind.REPLY:
                    raise ValueError(f"{header.kind.name} where a reply was due: protocol out of sync")
                answer, out = Command.unpack(payload)
                return answer.replies[-1], out

    def _result(self, command: Command, blobs: Optional[List[bytes]] = None) -> Optional[StepResult]:
        reply, _ = self.serve(command, blobs)
        with self.t.decoding(self.rank, f"result of {command.op.value}"):
            return None if reply.result is None else StepResult(**reply.result)

    def start_epoch(self, epoch: int) -> None:
        self.serve(Command(Op.EPOCH, epoch))
        for b in self.stage.boundaries:
            b.start_epoch(epoch)
        self.stage.compute_s, self.stage.steps, self.steps, self._stats = 0.0, 0, 0, None

    def train_step(self, x: Tensor, y: Tensor, ids: Tensor) -> StepResult:
        result = self._result(Command(Op.STEP))
        assert result is not None
        self.steps += 1
        return result

    def eval_step(self, x: Tensor, y: Tensor) -> StepResult:
        result = self._result(Command(Op.EVAL), [pack_state({"x": x, "y": y})])
        assert result is not None
        return result

    def held_out(self) -> Optional[StepResult]:
        return self._result(Command(Op.HELD_OUT))

    def weights(self) -> Dict[int, Dict[str, Tensor]]:
        """The edge parts' state, by unit index (for averaging or the hand-over)."""
        _, blobs = self.serve(Command(Op.WEIGHTS))
        with self.t.decoding(self.rank, "edge weights"):
            return dict(unpack_state(blobs[0])["units"])

    def load_edge(self, units: Dict[int, Any]) -> None:
        self.serve(Command(Op.AVERAGED), [pack_state({"units": units})])

    def train(self, mode: bool = True) -> None:
        """The edge's mode comes with each command, the cloud's with each step's header."""

    @property
    def lr(self) -> float:
        return self.stage.optimization.lr

    def local_units(self) -> Dict[int, nn.Module]:
        return dict(self.stage.units)

    def side_stats(self) -> Dict[str, SideStats]:
        """The edge's (its figures of what it sent join this client's meter, once an epoch) and the
        cloud's."""
        if self._stats is None:
            reply, _ = self.serve(Command(Op.STATS))
            with self.t.decoding(self.rank, "stats"):
                assert reply.side is not None and reply.meter is not None and reply.result is not None
                edge = SideStats.from_dict(reply.side)
                self.meter.merge(reply.meter)
                self.clock.seconds = {"edge": float(reply.result["compute_s"]), "cloud": self.stage.compute_s}
            self._stats = {"edge": edge, "cloud": self.stage.side_stats()}
        return self._stats

    def state_dict(self) -> Dict[str, Any]:
        _, blobs = self.serve(Command(Op.SAVE))
        with self.t.decoding(self.rank, "checkpoint part"):
            edge = unpack_state(blobs[0])
        s = self.stage
        return checkpoint.merge([edge, checkpoint.part(s.process, s.units, s.optimization, s.boundaries)])

    def load_state_dict(self, state: Dict[str, Any], edge_indices: List[int], cloud: bool = True) -> None:
        self.serve(Command(Op.LOAD), [pack_state(state_for(state, edge_indices))])
        s = self.stage
        if cloud:
            checkpoint.load_part(state_for(state, s.units), s.process, s.units, s.optimization, s.boundaries)


class Turns:
    """The trainer's loader of a many-edge dist epoch: one token per turn (the batches are the edges')."""

    def __init__(self, count: int, dataset: Any) -> None:
        self.count, self.dataset = count, dataset

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        for _ in range(self.count):
            yield torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.int64)
