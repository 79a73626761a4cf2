"""Wire protocol of the dist backend: the header before every payload, control messages."""
import pickle
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

# Every payload is preceded by one header message of HEADER_FIELDS int64 values:
# [kind | training << 8, micro-batch index, micro-batch count, payload bytes].
# So each payload on the link costs HEADER_BYTES more than the codec's payload.
HEADER_FIELDS = 4
HEADER_BYTES = HEADER_FIELDS * 8
# Tags keep the message streams of a pair apart: headers and payloads, and the pipeline's two
# directions (gradients apart from activations and control), so each stream is matched in order
# whatever the schedule interleaves (1F1B sends both ways on one link when there is one stage).
HEADER_TAG = 1
PAYLOAD_TAG = 2
GRAD_HEADER_TAG = 3
GRAD_PAYLOAD_TAG = 4


class Kind(IntEnum):
    FORWARD = 1  # activation of a train step (the receiver keeps the graph)
    EVAL = 2  # activation of an eval step (no gradients)
    BACKWARD = 3  # gradient of a train step
    CONTROL = 4  # a pickled command dict, edge -> cloud stages in order
    REPLY = 5  # the last cloud stage's answer to a command, back to the edge


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
            raise ValueError(f"corrupt header {t.tolist()}: unknown message kind {word & 0xFF}")
        return Header(kind, index, count, nbytes, bool(word >> 8 & 1))

    @staticmethod
    def empty() -> Tensor:
        return torch.zeros(HEADER_FIELDS, dtype=torch.int64)


def tags(kind: Optional[Kind]) -> Tuple[int, int]:
    """(header tag, payload tag) of the stream that carries messages of `kind`."""
    if kind == Kind.BACKWARD:
        return GRAD_HEADER_TAG, GRAD_PAYLOAD_TAG
    return HEADER_TAG, PAYLOAD_TAG


def pack_object(obj: Any) -> Tensor:
    """A picklable object as a uint8 payload (control messages, the config)."""
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)


def unpack_object(payload: Tensor) -> Any:
    return pickle.loads(payload.numpy().tobytes())


def command(op: str, **fields: Any) -> Dict[str, Any]:
    """A control message: `op` is epoch | save | load | stats | stop; stages append `replies`."""
    return {"op": op, "replies": [], **fields}


# Raw tensor wire form between cloud stages (and for uncompressed eval): a small header then data.
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def pack_tensor(x: Tensor) -> Tensor:
    """x as uint8: [dtype code, ndim, *shape] as int64, then its bytes (no compression)."""
    x = x.detach().contiguous()
    meta = torch.tensor([_DTYPES.index(x.dtype), x.dim(), *x.shape], dtype=torch.int64)
    return torch.cat([meta.view(torch.uint8), x.view(-1).view(torch.uint8)])


def unpack_tensor(payload: Tensor) -> Tensor:
    head = payload[:16].view(torch.int64)
    dtype, ndim = _DTYPES[int(head[0])], int(head[1])
    end = 16 + 8 * ndim
    shape = payload[16:end].view(torch.int64).tolist()
    return payload[end:].view(dtype).view(shape)
