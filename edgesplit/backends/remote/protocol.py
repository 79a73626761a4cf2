"""The wire protocol of the remote backend: message headers, typed control messages, state blobs.

Data only: headers are int64 fields, control messages JSON, unit state `torch.save` bytes read back
with `weights_only=True`. Nothing that arrives is unpickled."""
import io
import json
import re
import struct
from dataclasses import asdict, dataclass, field
from enum import Enum, IntEnum
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from edgesplit.backends.remote.seal import HEAD_BYTES

# Every payload is preceded by one header message: HEADER_FIELDS int64 values
# [kind | training << 8, micro-batch index, micro-batch count, payload bytes], then the two
# 16-byte integrity tags of seal.py. So each payload on the link costs HEADER_BYTES (64) of
# transport overhead.
HEADER_FIELDS = 4
HEADER_BYTES = HEAD_BYTES
MAX_PAYLOAD_BYTES = 1 << 34  # 16 GiB: a header declaring more is corrupt or hostile
MAX_JSON_DEPTH = 32  # a control message or stage spec nests a few levels: deeper is hostile
# Tags keep the message streams of a pair apart: headers and payloads, and the pipeline's two
# directions (gradients apart from activations and control), so each stream is matched in order
# whatever the order of steps interleaves (1F1B sends both ways on one link when there is one stage).
HEADER_TAG = 1
PAYLOAD_TAG = 2
GRAD_HEADER_TAG = 3
GRAD_PAYLOAD_TAG = 4


class Kind(IntEnum):
    FORWARD = 1  # activation of a train step (the receiver keeps the graph)
    EVAL = 2  # activation of an eval step (no gradients)
    BACKWARD = 3  # gradient of a train step
    CONTROL = 4  # a Command, edge -> cloud stages in order
    REPLY = 5  # the last cloud stage's Command with every stage's reply, back to the edge
    # precision=fp16, after each train step's backwards: one byte, 0 or 1
    OVERFLOW = 6  # a gradient of this stage or a later one overflowed; toward the edge, with gradients
    SCALER = 7  # the edge's decision for every side (1: skip the step); edge -> cloud stages in order


@dataclass(frozen=True)
class Header:
    kind: Kind
    index: int = 0
    count: int = 1
    nbytes: int = 0
    training: bool = True

    def to_tensor(self) -> Tensor:
        word = int(self.kind) | (int(self.training) << 8)
        return torch.tensor([word, self.index, self.count, self.nbytes], dtype=torch.int64)

    @staticmethod
    def from_tensor(t: Tensor) -> "Header":
        word, index, count, nbytes = (int(v) for v in t.tolist())
        try:
            kind = Kind(word & 0xFF)
        except ValueError:
            raise ValueError(f"corrupt header {t.tolist()}: unknown message kind {word & 0xFF}") from None
        if not (0 <= index < count and 0 <= nbytes <= MAX_PAYLOAD_BYTES and word >> 9 == 0):
            raise ValueError(f"corrupt header {t.tolist()}: need 0 <= index < count, "
                             f"0 <= bytes <= {MAX_PAYLOAD_BYTES}")
        return Header(kind, index, count, nbytes, bool(word >> 8 & 1))


def tags(kind: Optional[Kind]) -> Tuple[int, int]:
    """(header tag, payload tag) of the stream that carries messages of `kind`."""
    if kind in (Kind.BACKWARD, Kind.OVERFLOW):
        return GRAD_HEADER_TAG, GRAD_PAYLOAD_TAG
    return HEADER_TAG, PAYLOAD_TAG


class Op(str, Enum):
    """What a control message asks of every cloud stage, in pipeline order."""
    EPOCH = "epoch"  # start epoch `epoch`: learning rate, statistics afresh
    STATS = "stats"  # reply with side stats and the meter's figures
    SAVE = "save"  # reply with this stage's checkpoint part (a blob)
    LOAD = "load"  # load the first blob (this stage's part), pass the rest on
    STOP = "stop"
    # many edges (edgesplit.clients.dist): the cloud's commands to one client's edge
    STEP = "step"  # train on your next batch (against the cloud), reply with the step's result
    EVAL = "eval"  # evaluate the blob's batch (the shared validation set), reply with the result
    HELD_OUT = "held_out"  # evaluate your held-out samples, reply with the result (none: null)
    WEIGHTS = "weights"  # reply with your edge parts' state (a blob: for averaging or hand-over)
    AVERAGED = "averaged"  # load the blob's edge parts' state (the average, or the handed-over edge)


@dataclass
class Reply:
    """One cloud stage's answer to a command."""
    stage: int  # 1-based
    side: Optional[Dict[str, Any]] = None  # SideStats fields (STATS)
    meter: Optional[Dict[str, Any]] = None  # CommMeter.state() (STATS)
    result: Optional[Dict[str, Any]] = None  # a client's StepResult fields (STEP, EVAL, HELD_OUT)


@dataclass
class Command:
    op: Op
    epoch: int = 0
    replies: List[Reply] = field(default_factory=list)

    def pack(self, blobs: Optional[List[bytes]] = None) -> Tensor:
        body = {"op": self.op.value, "epoch": self.epoch, "replies": [asdict(r) for r in self.replies]}
        return pack_message(body, blobs or [])

    @staticmethod
    def unpack(payload: Tensor) -> Tuple["Command", List[bytes]]:
        body, blobs = unpack_message(payload)
        try:
            command = Command(Op(body["op"]), int(body["epoch"]),
                              [Reply(**r) for r in body["replies"]])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed control message: {type(e).__name__}: {e}") from None
        return command, blobs


_MAGIC = b"ESM1"
_U64 = struct.Struct("<Q")


def pack_message(body: Dict[str, Any], blobs: List[bytes]) -> Tensor:
    """[magic][u64 length, JSON body][u64 count][u64 length, blob]... as a uint8 tensor."""
    text = json.dumps(body, allow_nan=False).encode()
    parts = [_MAGIC, _U64.pack(len(text)), text, _U64.pack(len(blobs))]
    for blob in blobs:
        parts += [_U64.pack(len(blob)), blob]
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)


def unpack_message(payload: Tensor) -> Tuple[Dict[str, Any], List[bytes]]:
    data = payload.numpy().tobytes()
    if data[:4] != _MAGIC:
        raise ValueError("malformed control message: bad magic")
    pos = 4

    def take(n: int) -> bytes:
        nonlocal pos
        if n > len(data) - pos:
            raise ValueError(f"malformed control message: a field declares {n} bytes, "
                             f"{len(data) - pos} follow")
        pos += n
        return data[pos - n:pos]

    body = loads_bounded(take(_U64.unpack(take(8))[0]), "control message")
    if not isinstance(body, dict):
        raise ValueError("malformed control message: the body is not a JSON object")
    blobs = [take(_U64.unpack(take(8))[0]) for _ in range(_U64.unpack(take(8))[0])]
    return body, blobs


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


def loads_bounded(text: bytes, what: str) -> Any:
    """JSON whose nesting is checked (at most MAX_JSON_DEPTH) before the parser recurses into it."""
    depth = deepest = 0
    for c in _NOT_BRACKET.sub(b"", _STRING.sub(b"", text)):
        depth += 1 if c in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise ValueError(f"malformed {what}: JSON nested {deepest} deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"malformed {what}: {type(e).__name__}: {str(e)[:200]}") from None


class StateError(ValueError):
    """A state blob that is not data-only torch.save output of a dict: the one error of unpack_state."""


def pack_state(state: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def unpack_state(blob: bytes) -> Dict[str, Any]:
    """Tensors, numbers, strings and containers only: `weights_only=True` runs no code. Whatever is
    wrong with the blob is one StateError with the reason."""
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, IndexError...)
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise StateError(f"malformed state blob ({len(blob)} bytes): {type(e).__name__}: {reason}") from None
    if not isinstance(state, dict):
        raise StateError(f"malformed state blob: a {type(state).__name__}, not a dict")
    return state
