"""Message integrity: every header and payload carries an HMAC-SHA256 tag keyed by the shared secret.

A message on the wire is a 64-byte head: the 4 int64 header fields, a 16-byte tag of the payload
and a 16-byte tag of the head (fields + payload tag), both bound to the stream (sender, receiver,
tag) and the message's sequence number on it, so a forged, modified, replayed or reordered message
is refused before anything is allocated or decoded. Tags are HMAC-SHA256 truncated to 128 bits."""
import hashlib
import hmac
import struct
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

TAG_BYTES = 16
FIELD_BYTES = 32  # protocol.HEADER_FIELDS int64 values
HEAD_BYTES = FIELD_BYTES + 2 * TAG_BYTES
_CONTEXT = struct.Struct("<qqqq")  # sender, receiver, stream tag, sequence number


class IntegrityError(ValueError):
    """A message whose tag does not match: not sent by a holder of the secret, or modified."""


def _tag(key: bytes, context: bytes, *parts: object) -> bytes:
    mac = hmac.new(key, context, hashlib.sha256)
    for part in parts:
        mac.update(part)  # type: ignore[arg-type]  # bytes or a contiguous numpy array
    return mac.digest()[:TAG_BYTES]


def _bytes_of(payload: Tensor) -> object:
    """The payload's bytes without a copy (a CPU uint8 tensor; numpy arrays are buffers)."""
    return payload.numpy() if payload.numel() else b""


class Sealer:
    """Tags and checks the messages of one process; counts the messages of each stream. `peers`:
    a key per peer rank (many edges: each client's link has its own), else `key` for every peer."""

    def __init__(self, key: bytes, peers: Optional[Mapping[int, bytes]] = None) -> None:
        self.key, self.peers = key, dict(peers or {})
        self._next: Dict[Tuple[str, int, int, int], int] = {}

    def _context(self, way: str, src: int, dst: int, stream: int) -> bytes:
        seq = self._next.get((way, src, dst, stream), 0)
        self._next[(way, src, dst, stream)] = seq + 1
        return _CONTEXT.pack(src, dst, stream, seq)

    def seal(self, src: int, dst: int, stream: int, fields: Tensor, payload: Tensor) -> Tensor:
        """The head (uint8, HEAD_BYTES) of the next message src -> dst on `stream`."""
        context, key = self._context("send", src, dst, stream), self.peers.get(dst, self.key)
        raw = fields.numpy().tobytes()
        payload_tag = _tag(key, context, b"payload", _bytes_of(payload))
        head_tag = _tag(key, context, b"head", raw, payload_tag)
        return torch.frombuffer(bytearray(raw + payload_tag + head_tag), dtype=torch.uint8)

    def open(self, src: int, dst: int, stream: int, head: Tensor) -> Tuple[Tensor, bytes, bytes]:
        """(int64 fields, payload tag, context) of a received head; IntegrityError if its tag
        does not match."""
        context = self._context("recv", src, dst, stream)
        raw = head.numpy().tobytes()
        fields, payload_tag, head_tag = (raw[:FIELD_BYTES], raw[FIELD_BYTES:FIELD_BYTES + TAG_BYTES],
                                         raw[FIELD_BYTES + TAG_BYTES:])
        if not hmac.compare_digest(head_tag, _tag(self.peers.get(src, self.key), context, b"head", fields,
                                                  payload_tag)):
            raise IntegrityError("its header fails the integrity check (HMAC)")
        return torch.frombuffer(bytearray(fields), dtype=torch.int64), payload_tag, context

    def check(self, payload: Tensor, payload_tag: bytes, context: bytes) -> None:
        """IntegrityError unless the payload is the one its (checked) head announced."""
        src = _CONTEXT.unpack(context)[0]
        if not hmac.compare_digest(payload_tag, _tag(self.peers.get(src, self.key), context, b"payload",
                                                     _bytes_of(payload))):
            raise IntegrityError("its payload fails the integrity check (HMAC)")
