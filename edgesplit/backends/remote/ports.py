"""Where a stage's micro-batches come from and go to: the batch, a link, the loss.

A source hands a stage its input and takes the input's gradient back; a sink takes the stage's
output and runs its backward. On a link both ends call the same Boundary (encode, count, measure
at the sender; decode at the receiver); between cloud stages the boundary is a raw one."""
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from edgesplit.backends.remote.protocol import HEADER_BYTES, Header, Kind
from edgesplit.backends.remote.transport import SendHandle, Transport
from edgesplit.boundary.boundary import Boundary
from edgesplit.errors import PeerError


@dataclass(frozen=True)
class StepInfo:
    """One step as every stage sees it: micro-batches, gradients or not, module mode."""
    count: int
    train: bool  # a train step (forward and backward) or an eval step (forward only)
    training: bool  # the modules' mode (an eval step of a model in training mode is possible)

    @property
    def kind(self) -> Kind:
        return Kind.FORWARD if self.train else Kind.EVAL


Ids = Optional[Tensor]  # a micro-batch's dataset indices (train steps whose codecs need them)


class Source(ABC):
    def begin(self, step: StepInfo) -> None:
        self.step = step

    @abstractmethod
    def receive(self, i: int) -> Tuple[Tensor, Ids]:
        """Input of micro-batch i and its samples' dataset indices."""

    def send_gradient(self, i: int, grad: Optional[Tensor], ids: Ids) -> None:
        """The gradient of micro-batch i's input (nothing to do for the batch itself)."""


class Sink(ABC):
    def begin(self, step: StepInfo) -> None:
        self.step = step

    @abstractmethod
    def send(self, i: int, y: Tensor, ids: Ids) -> None:
        """Output of micro-batch i."""

    @abstractmethod
    def backward(self, i: int, y: Tensor, ids: Ids) -> None:
        """Backward from micro-batch i's output."""


class Inputs(Source):
    """The edge's batch, cut into micro-batches, with their dataset indices."""

    def __init__(self, chunks: List[Tensor], ids: List[Ids]) -> None:
        self.chunks, self.ids = chunks, ids

    def receive(self, i: int) -> Tuple[Tensor, Ids]:
        return self.chunks[i], self.ids[i]


class Loss(Sink):
    """The edge's labels: each micro-batch's loss scaled by its share of the batch, so the
    gradients are those of the whole batch's mean loss (as GPipe's); in fp32 whatever the logits'
    dtype, and multiplied by fp16's loss scale (`scale`) before its backward."""

    def __init__(self, labels: List[Tensor], scale: Callable[[Tensor], Tensor] = lambda t: t) -> None:
        self.labels, self.scale = labels, scale
        self.batch = sum(y.numel() for y in labels)
        self.logits: Dict[int, Tensor] = {}
        self.losses: Dict[int, Tensor] = {}

    def send(self, i: int, y: Tensor, ids: Ids) -> None:
        self.losses[i] = F.cross_entropy(y.float(), self.labels[i].to(y.device))
        self.logits[i] = y.detach()

    def backward(self, i: int, y: Tensor, ids: Ids) -> None:
        self.scale(self.losses[i] * (self.labels[i].numel() / self.batch)).backward()

    def mean(self) -> Tensor:
        return sum(self.losses[i].detach() * (y.numel() / self.batch)
                   for i, y in enumerate(self.labels))  # type: ignore[return-value]


class _Link:
    """One end of a link to `peer`: sends go out without blocking and are awaited by flush().

    With `carry_ids` (a codec at either edge-link boundary needs the samples' dataset indices),
    each train step's activation message is [n, n ids, payload] as int64 words and bytes: the
    indices travel along every link (through the cloud stages to the back boundary) and count
    as transport overhead."""

    def __init__(self, transport: Transport, peer: int, boundary: Boundary,
                 device: torch.device, carry_ids: bool = False) -> None:
        self.t, self.peer, self.boundary, self.device = transport, peer, boundary, device
        self.carry_ids = carry_ids
        self.step = StepInfo(0, False, False)  # the step begin() sets
        self.supports: Dict[int, Optional[Tensor]] = {}
        self.pending: List[SendHandle] = []

    def _with_ids(self, ids: Ids, payload: Tensor) -> Tensor:
        if not (self.carry_ids and self.step.train):
            return payload
        assert ids is not None, "carry_ids: a train step's micro-batch without dataset indices"
        words = torch.cat([torch.tensor([ids.numel()]), ids.to("cpu", torch.int64)])
        self.boundary.add_overhead("forward", words.numel() * 8)
        return torch.cat([words.view(torch.uint8), payload.to("cpu")])

    def _split_ids(self, message: Tensor) -> Tuple[Ids, Tensor]:
        if not (self.carry_ids and self.step.train):
            return None, message
        if message.numel() < 8:
            raise ValueError(f"a message of {message.numel()} bytes holds no sample-id count")
        n = int(message[:8].clone().view(torch.int64))
        if not 0 < n <= (message.numel() - 8) // 8:
            raise ValueError(f"a message of {message.numel()} bytes declares {n} sample ids")
        return message[8:8 + 8 * n].clone().view(torch.int64), message[8 + 8 * n:]

    def _send(self, pass_: str, header: Header, payload: Tensor) -> None:
        self.boundary.add_overhead(pass_, HEADER_BYTES)
        self.pending.append(self.t.send(self.peer, header, payload))

    def flush(self) -> None:
        self.t.wait_sent(self.pending, self.peer)

    def _send_flag(self, kind: Kind, pass_: str, value: bool) -> None:
        """One byte of fp16's step agreement (transport overhead, as a header is)."""
        self.boundary.add_overhead(pass_, 1)
        self._send(pass_, Header(kind), torch.tensor([int(value)], dtype=torch.uint8))

    def _recv_flag(self, kind: Kind) -> bool:
        _, payload = self.t.recv(self.peer, kind)
        if payload.numel() != 1 or int(payload[0]) > 1:
            raise PeerError(f"{self.t.name(self.t.rank)} got a malformed {kind.name} message from "
                            f"{self.t.name(self.peer)}: {payload.numel()} bytes, expected one, "
                            f"0 or 1")
        return bool(payload[0])


class LinkIn(_Link, Source):
    """Activations from the stage before; their gradients go back to it."""

    def __init__(self, transport: Transport, peer: int, boundary: Boundary,
                 device: torch.device, carry_ids: bool = False) -> None:
        super().__init__(transport, peer, boundary, device, carry_ids)
        self.first: Optional[Tuple[Header, Tensor]] = None

    def prime(self, header: Header, payload: Tensor) -> None:
        """Micro-batch 0, already received by the loop that waits for the next step."""
        self.first = (header, payload)

    def receive(self, i: int) -> Tuple[Tensor, Ids]:
        if i == 0 and self.first is not None:
            _, message = self.first
            self.first = None
        else:
            _, message = self.t.recv(self.peer, self.step.kind, i)
        with self.t.decoding(self.peer, f"{self.step.kind.name} payload #{i}"):
            ids, payload = self._split_ids(message)
            x = self.boundary.receive("forward", payload, ids=ids).to(self.device)
            if self.step.train:
                self.supports[i] = self.boundary.support(payload)
        if self.step.train:
            x.requires_grad_(True)
        return x, ids

    def send_gradient(self, i: int, grad: Optional[Tensor], ids: Ids) -> None:
        assert grad is not None, "the input of a cloud stage requires a gradient"
        if ids is None:  # ids that did not cross the link: the edge's own (its back's gradient defense)
            ids = self.boundary.step_ids(i)
        payload = self.boundary.send("backward", grad, self.supports.pop(i), ids)
        self._send("backward", Header(Kind.BACKWARD, i, self.step.count), payload)

    def report_overflow(self, overflow: bool) -> None:
        """fp16: whether this stage or one after it overflowed, behind the step's gradients."""
        self._send_flag(Kind.OVERFLOW, "backward", overflow)

    def receive_decision(self) -> bool:
        """fp16: the edge's decision for the step (True: skip it)."""
        return self._recv_flag(Kind.SCALER)


class LinkOut(_Link, Sink):
    """Activations to the stage after; their gradients come back from it."""

    def send(self, i: int, y: Tensor, ids: Ids) -> None:
        payload = self.boundary.send("forward", y, ids=ids)
        if self.step.train:
            self.supports[i] = self.boundary.support(payload)
        self._send("forward", Header(self.step.kind, i, self.step.count,
                                     training=self.step.training), self._with_ids(ids, payload))

    def backward(self, i: int, y: Tensor, ids: Ids) -> None:
        _, payload = self.t.recv(self.peer, Kind.BACKWARD, i)
        with self.t.decoding(self.peer, f"BACKWARD payload #{i}"):
            grad = self.boundary.receive("backward", payload, self.supports.pop(i), ids)
        y.backward(grad.to(y.device))

    def receive_overflow(self) -> bool:
        """fp16: the report of the stages after this one (sent behind their gradients)."""
        return self._recv_flag(Kind.OVERFLOW)

    def send_decision(self, skip: bool) -> None:
        """fp16: the step's decision, on to the stages after this one."""
        self._send_flag(Kind.SCALER, "forward", skip)
