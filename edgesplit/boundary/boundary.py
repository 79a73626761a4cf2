"""A compression boundary: its codecs, the forward support, byte counts, quality and state."""
import math
import zlib
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from edgesplit.codecs import Codec, Crossing, Identity, NonFiniteError
from edgesplit.errors import TrainingDiverged
from edgesplit.codecs.fused import nonfinite
from edgesplit.codecs.header import limit_numel, payload_bound
from edgesplit.boundary.meter import DIRECTION, CommMeter
from edgesplit.codecs.build import BoundaryCodecs
from edgesplit.run.precision import dtype_name

RAW = BoundaryCodecs(Identity(), Identity(), reuses_support=False)
GradientDefense = Callable[[Tensor, int], Tensor]  # (gradient, draw key) -> the gradient to send
# a reader of what the receiver decodes of a train crossing: (pass, tensor, micro-batch ids)
Tap = Callable[[str, Tensor, Optional[Tensor]], None]
MASK64 = 2**64 - 1


def quality(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """Relative error ||x - y|| / ||x|| (0 when x is 0) and the fraction of zeros in what arrived,
    as 0-d tensors on x's device: the meter reads them once the step ends."""
    x32, y32 = x.detach().float(), y.detach().float()
    norm = torch.linalg.vector_norm(x32)
    err = torch.linalg.vector_norm(x32 - y32)
    rel = torch.where(norm > 0, err / torch.where(norm > 0, norm, 1.0), 0.0)
    return rel, (y32 == 0).float().mean()


def draw_key(seed: int, step: int, boundary: str, pass_: str, first_id: int) -> int:
    """The 63-bit seed of one crossing's random draws, from who and when it is alone: the same in
    every backend, process and resumed run."""
    words = [seed & MASK64, step, zlib.crc32(f"{boundary}/{pass_}".encode()), first_id & MASK64]
    state = np.random.SeedSequence(words).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


class Boundary:
    """One crossing point of the pipeline, as every backend uses it: the sender calls `send`
    (encode, count the payload, measure the codec on the step's first crossing), the receiver
    calls `receive` (decode). The gradient codec sees the support the forward payload kept, which
    both sides derive from that payload (`support`), so it never travels.

    `codecs` are the forward sender's codec instances, `receiver` the forward receiver's (the same
    objects unless a codec keeps per-sample state: then each end has its own, as across hosts).
    A training crossing of micro-batch `ids` (dataset indices) gets a Crossing: codecs that draw
    random numbers seed them from (seed, train step, boundary, pass, ids[0]), per-sample codecs
    index their state by ids. During `warmup_epochs` raw values cross (per-sample codecs still
    record them).

    `meter` is None for a link between two cloud stages: raw values, nothing counted. Eval steps
    send raw values too when `eval_compressed` is off. Raw bytes are counted at the tensor's own
    dtype size, and at 4 bytes an element beside them (the fp32-equivalent figure) of the model's
    tensor at the boundary: behind a bottleneck's encoder (`channels` = (C, reduced C)) the one
    before it, C/reduced C times the crossing tensor.

    With `loss_scaled` (precision=fp16), a gradient that holds inf or NaN is a loss-scaler overflow,
    not a divergence: it crosses with those values as zeros and the step's flag is raised
    (`overflows()`: device tensors, no host sync), so the backend skips the step on every side.
    `channels_last`: a received 4-D activation is handed on in that memory format. Any other
    tensor to encode that holds NaN or inf ends the run: TrainingDiverged. `largest` (a link
    from another process: the shape of the largest tensor that crosses it, rows first): a received
    payload that declares more bytes than any codec's payload of it takes, or more elements, is
    refused before it is decompressed or decoded, and one of another shape (per sample) after.
    `defense` (the back boundary's: privacy's defenses): what each training gradient this end
    encodes goes through first, its draws keyed as a codec's (pass 'defense'): every micro-batch
    then needs its ids (next_ids; dist's edge gets them from new_step, `step_ids`)."""

    def __init__(self, name: str, codecs: BoundaryCodecs, meter: Optional[CommMeter],
                 eval_compressed: bool = True, seed: int = 0,
                 receiver: Optional[BoundaryCodecs] = None,
                 channels: Tuple[int, int] = (1, 1)) -> None:
        self.name, self.codecs, self.meter = name, codecs, meter
        self.channels = channels  # (the model's, what crosses): bottleneck.boundary_channels
        self.receiver = receiver or codecs
        self.eval_compressed, self.seed = eval_compressed, seed
        self.training, self.warm = True, False
        self.step = 0  # train steps so far: part of each crossing's draw key
        self._batch_ids: List[Tensor] = []  # in one process: this step's micro-batches' ids
        self._forwards = 0
        self._measure_due = {"forward": False, "backward": False}
        self.loss_scaled, self.channels_last = False, False
        self.largest: Optional[Tuple[int, ...]] = None
        self._overflows: List[Tensor] = []  # this step's non-finite gradient flags (loss_scaled)
        self._nonfinite: List[Tuple[str, Tensor]] = []  # fused encodes' flags, read once a step
        # privacy's defense of the gradients this boundary sends backward (edgesplit.privacy.defenses)
        self.defense: Optional[GradientDefense] = None
        self.tap: Optional[Tap] = None  # privacy's attacks: gets a copy, changes nothing

    @staticmethod
    def raw(name: str) -> "Boundary":
        """A link that carries raw values and is not the edge link (between cloud stages)."""
        return Boundary(name, RAW, None)

    @property
    def compressed(self) -> bool:
        return self.training or self.eval_compressed

    @property
    def needs_ids(self) -> bool:
        return self.codecs.needs_ids

    def codec(self, pass_: str, end: str = "encode") -> Codec:
        """The codec that encodes (end='encode') or decodes a pass."""
        if not self.compressed or self.warm:
            return RAW.activation
        forward_sender = (pass_ == "forward") == (end == "encode")
        codecs = self.codecs if forward_sender else self.receiver
        return codecs.activation if pass_ == "forward" else codecs.gradient

    def start_epoch(self, epoch: int) -> None:
        """Raw values during the compressor's warm-up epochs."""
        self.warm = epoch < self.codecs.warmup_epochs

    def new_step(self, batch_ids: Optional[List[Tensor]] = None) -> None:
        """A train step begins: measure the codecs on its first crossing.
        In one process `batch_ids` are its micro-batches' dataset indices, in micro-batch order."""
        self.step += 1
        self._measure_due = {"forward": True, "backward": True}
        self._batch_ids, self._forwards = batch_ids or [], 0
        self._overflows = []
        self._nonfinite = []

    def check_finite(self) -> None:
        """TrainingDiverged if a tensor a fused (device) encode sent since the last check held NaN
        or inf: what the host path raises at the encode, read here once (a wait for the device)."""
        flags, self._nonfinite = self._nonfinite, []
        if flags and bool(torch.stack([f for _, f in flags]).any()):
            raise self._diverged(next(p for p, f in flags if bool(f)))

    def _diverged(self, pass_: str) -> TrainingDiverged:
        """A codec refused a non-finite tensor: the run's error, in training and evaluation alike
        (the trainer adds where the run was)."""
        return TrainingDiverged(f"boundary {self.name}: the {pass_} tensor to encode holds NaN or inf")

    def overflows(self) -> List[Tensor]:
        """This train step's flags (bool device tensors): a gradient sent held inf or NaN."""
        return list(self._overflows)

    def _finite(self, x: Tensor) -> Tensor:
        """x with inf/NaN as zeros; whether there were any joins this step's flags."""
        self._overflows.append(~torch.isfinite(x).all())  # list.append: atomic across threads
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    def next_ids(self, rows: int) -> Optional[Tensor]:
        """The ids of the next micro-batch to cross forward in one process: a pipeline runs a
        partition's micro-batches in order (a recomputation replays a crossing: not one)."""
        if not (self.training and (self.needs_ids or self.defense is not None or self.tap is not None)):
            return None
        if self._forwards >= len(self._batch_ids):
            raise RuntimeError(f"boundary {self.name}: more forward crossings than the "
                               f"{len(self._batch_ids)} micro-batches of this step")
        ids = self._batch_ids[self._forwards]
        self._forwards += 1
        if ids.numel() != rows:
            raise RuntimeError(f"boundary {self.name}: micro-batch of {rows} rows, its ids "
                               f"hold {ids.numel()}: micro-batches crossed out of order")
        return ids

    def step_ids(self, index: int) -> Optional[Tensor]:
        """The ids of this step's micro-batch `index` that new_step was given (None: none)."""
        return self._batch_ids[index] if index < len(self._batch_ids) else None

    def crossing(self, pass_: str, ids: Optional[Tensor]) -> Crossing:
        """Which crossing this is: ids and draw key when a codec needs them, in training only."""
        if not self.training or ids is None or not self.needs_ids:
            return Crossing(update=self.training)
        ids = ids.detach().to("cpu", torch.int64)
        return Crossing(ids, draw_key(self.seed, self.step, self.name, pass_, int(ids[0])), True)

    # -- the two halves of a crossing -----------------------------------------------------------
    def send(self, pass_: str, x: Tensor, support: Optional[Tensor] = None,
             ids: Optional[Tensor] = None) -> Tensor:
        """The payload of `x` (an activation for pass_='forward', a gradient for 'backward') of
        the micro-batch of dataset indices `ids`, for the link: the payload goes to the host next,
        so a fused encode's finiteness is checked now."""
        payload = self._encode(pass_, x, support, ids)[0]
        self.check_finite()
        return payload

    def _encode(self, pass_: str, x: Tensor, support: Optional[Tensor],
                ids: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], Crossing]:
        """(payload, its decode where the sender made one, the crossing)."""
        x = x.detach()
        if self.loss_scaled and pass_ == "backward":
            x = self._finite(x)
        if self.defense is not None and self.training and pass_ == "backward":
            if ids is None:
                raise RuntimeError(f"boundary {self.name}: the gradient defense needs the micro-batch's ids")
            x = self.defense(x, draw_key(self.seed, self.step, self.name, "defense", int(ids[0])))
        codec, crossing = self.codec(pass_), self.crossing(pass_, ids)
        try:
            payload = codec.encode(x, support, crossing)
        except NonFiniteError:
            raise self._diverged(pass_) from None
        flag = nonfinite(payload)
        if flag is not None:
            self._nonfinite.append((pass_, flag))  # list.append: atomic across threads
        decoded = None
        if codec.mirrors and crossing.update:  # the sender's state follows the receiver's
            decoded = codec.decode(payload, support, crossing)
        if self.warm and crossing.update and pass_ == "forward":
            self.codecs.activation.observe(x, crossing)
        if self.meter is not None and self.training:
            self.meter.record(self.name, pass_, payload.numel(), x.numel() * x.element_size(),
                              codec.coded_bytes(payload), x.numel(),
                              x.numel() * 4 * self.channels[0] // self.channels[1], dtype_name(x.dtype))
            if self._measure_due[pass_]:
                self._measure_due[pass_] = False
                if decoded is None:
                    decoded = codec.decode(payload, support, replace(crossing, update=False))
                self.meter.record_quality(self.name, pass_, *quality(x, decoded))
        if self.tap is not None and crossing.update:  # the receiver's decode, made here for the tap
            self.tap(pass_, decoded if decoded is not None else
                     codec.decode(payload, support, replace(crossing, update=False)), ids)
        return payload, decoded, crossing

    def receive(self, pass_: str, payload: Tensor, support: Optional[Tensor] = None,
                ids: Optional[Tensor] = None) -> Tensor:
        crossing, codec = self.crossing(pass_, ids), self.codec(pass_, "decode")
        if self.largest is None:
            return self._received(pass_, codec.decode(payload, support, crossing), crossing)
        numel = math.prod(self.largest)
        declared, bound = codec.coded_bytes(payload), payload_bound(numel)
        if declared > bound:  # before an entropy stage: what it decompresses to
            raise ValueError(f"boundary {self.name}: the {pass_} payload declares {declared} bytes, "
                             f"more than any codec's payload of this boundary's largest tensor "
                             f"{self.largest} takes ({bound} bytes)")
        with limit_numel(numel):
            out = codec.decode(payload, support, crossing)
        if out.shape[1:] != self.largest[1:] or out.shape[0] > self.largest[0]:
            raise ValueError(f"boundary {self.name}: the {pass_} payload holds a tensor of shape "
                             f"{tuple(out.shape)}, this boundary carries up to {self.largest[0]} "
                             f"samples of shape {self.largest[1:]}")
        return self._received(pass_, out, crossing)

    def exchange(self, pass_: str, x: Tensor, support: Optional[Tensor] = None,
                 ids: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """send, then receive, in one process: (payload, what the receiver decodes). The decode
        the sender made to measure the codec is the receiver's too where decoding keeps no state
        (no second decode of the step's first crossing)."""
        payload, decoded, crossing = self._encode(pass_, x, support, ids)
        decoder = self.codec(pass_, "decode")
        if decoded is None or decoder.per_sample or self.receiver.activation.per_sample:
            return payload, self.receive(pass_, payload, support, ids)
        return payload, self._received(pass_, decoded, crossing)

    def _received(self, pass_: str, out: Tensor, crossing: Crossing) -> Tensor:
        """What a decoded tensor becomes on the receiving side."""
        if self.warm and crossing.update and pass_ == "forward":
            self.receiver.activation.observe(out, crossing)
        if self.channels_last and pass_ == "forward" and out.dim() == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def support(self, forward_payload: Tensor) -> Optional[Tensor]:
        """Where the gradient travels: the positions the forward payload kept (None: all)."""
        if not (self.compressed and self.codecs.reuses_support) or self.warm:
            return None
        return self.codecs.activation.support_of(forward_payload)

    def add_overhead(self, pass_: str, nbytes: int) -> None:
        """Transport bytes beside a payload of this boundary (message headers), counted apart."""
        if self.meter is not None and self.training:
            self.meter.record_overhead(DIRECTION[self.name, pass_], nbytes)

    # -- codec state (error-feedback residuals, per-sample references) ---------------------------
    def state_dict(self) -> Dict[str, Any]:
        state = {"step": self.step, "activation": self.codecs.activation.state_dict(),
                 "gradient": self.codecs.gradient.state_dict()}
        if self.receiver is not self.codecs:
            state["receiver"] = {"activation": self.receiver.activation.state_dict(),
                                 "gradient": self.receiver.gradient.state_dict()}
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.codecs.activation.load_state_dict(state.get("activation", {}))
        self.codecs.gradient.load_state_dict(state.get("gradient", {}))
        if self.receiver is not self.codecs:
            theirs = state.get("receiver", {})
            self.receiver.activation.load_state_dict(theirs.get("activation", {}))
            self.receiver.gradient.load_state_dict(theirs.get("gradient", {}))

    def state_bytes(self, forward_sender: bool = True) -> int:
        """Bytes of per-sample codec state that the forward sender's (or receiver's) end holds."""
        codecs = self.codecs if forward_sender else self.receiver
        if not forward_sender and codecs is self.codecs:
            return 0  # one end in this process
        return codecs.activation.state_bytes() + codecs.gradient.state_bytes()
