"""Entropy: a lossless stage (zlib or zstd) over any codec's payload."""
import zlib
from typing import Any, Dict, Optional

import torch
import zstandard
from torch import Tensor

from .base import Codec, Crossing
from .header import ENTROPY, ENTROPY_HEADER, ZLIB, ZSTD

METHODS = {"zlib": ZLIB, "zstd": ZSTD}
# zlib 1 and zstd 1: on quantized codes and top-k payloads their higher levels gain a few percent
# for several times the time (docs/codecs.md)
DEFAULT_LEVELS = {"zlib": 1, "zstd": 1}
MAX_INNER = 2 ** 32 - 1  # the header's u32
# A zstd block of 4 bytes expands to at most 128 KiB: no frame holds more than 32768 bytes per byte
ZSTD_MAX_RATIO = 1 << 16


class Entropy(Codec):
    """The inner codec's payload compressed losslessly: header (codec id, method, inner payload
    bytes: 6 bytes), then the zlib stream or zstd frame. Encode and decode run on host bytes (a
    CUDA payload is copied to the CPU and back). support_of, `random`, `per_sample` and the state
    are the inner codec's (the boundary's meter counts the bytes before and after this stage:
    coded_bytes)."""

    name = "Entropy"

    def __init__(self, inner: Codec, method: str = "zstd", level: Optional[int] = None) -> None:
        if not isinstance(inner, Codec):
            raise ValueError(f"{self.name}: inner must be an edgesplit.codecs.Codec, "
                             f"got {type(inner).__name__}")
        if method not in METHODS:
            raise ValueError(f"{self.name}: method must be one of {', '.join(METHODS)}, "
                             f"got {method!r}")
        self.inner, self.method = inner, method
        self.level = DEFAULT_LEVELS[method] if level is None else level
        bounds = (0, 9) if method == "zlib" else (-7, 22)
        if isinstance(self.level, bool) or not isinstance(self.level, int) \
                or not bounds[0] <= self.level <= bounds[1]:
            raise ValueError(f"{self.name}: {method} level must be in {bounds[0]}..{bounds[1]}, "
                             f"got {level!r}")
        self.random, self.per_sample, self.mirrors = inner.random, inner.per_sample, inner.mirrors

    def __repr__(self) -> str:
        return f"Entropy({self.inner!r}, method={self.method!r}, level={self.level})"

    def _compress(self, raw: bytes) -> bytes:
        if self.method == "zlib":
            return zlib.compress(raw, self.level)
        return zstandard.ZstdCompressor(level=self.level, write_content_size=False,
                                        write_checksum=False, write_dict_id=False).compress(raw)

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        inner = self.inner.encode(x, support=support, crossing=crossing)
        if inner.numel() > MAX_INNER:
            raise ValueError(f"{self.name}: inner payload of {inner.numel()} bytes is too large "
                             f"(at most {MAX_INNER})")
        body = self._compress(inner.cpu().numpy().tobytes())
        head = ENTROPY_HEADER.pack(ENTROPY, METHODS[self.method], inner.numel())
        return torch.frombuffer(bytearray(head + body), dtype=torch.uint8).to(inner.device)

    def coded_bytes(self, payload: Tensor) -> int:
        if payload.numel() < ENTROPY_HEADER.size:
            return payload.numel()
        return int(ENTROPY_HEADER.unpack(bytes(payload[:ENTROPY_HEADER.size].cpu().tolist()))[2])

    def _inner(self, payload: Tensor) -> Tensor:
        """The inner payload, on the payload's device: the header checked, the stream
        decompressed into at most the declared size, nothing left over."""
        if payload.dtype != torch.uint8 or payload.dim() != 1:
            raise TypeError(f"{self.name}: a payload is a 1-D uint8 tensor, got {payload.dtype} "
                            f"of shape {tuple(payload.shape)}")
        raw = payload.cpu().numpy().tobytes()
        if len(raw) < ENTROPY_HEADER.size:
            raise ValueError(f"{self.name}: payload of {len(raw)} bytes is truncated (header "
                             f"needs {ENTROPY_HEADER.size})")
        codec, method, size = ENTROPY_HEADER.unpack_from(raw)
        if codec != ENTROPY:
            raise ValueError(f"{self.name}: payload was made by codec id {codec}, expected "
                             f"{ENTROPY}")
        if method != METHODS[self.method]:
            raise ValueError(f"{self.name}: payload field method is {method}, this codec's "
                             f"{self.method} is {METHODS[self.method]}")
        if size == 0:
            raise ValueError(f"{self.name}: payload field inner size is 0 (a payload has a header)")
        body = raw[ENTROPY_HEADER.size:]
        try:
            out = _unzlib(body, size) if self.method == "zlib" else _unzstd(body, size)
        except (zlib.error, zstandard.ZstdError) as e:
            raise ValueError(f"{self.name}: corrupt {self.method} stream: "
                             f"{' '.join(str(e).split())}") from None
        if len(out) != size:
            raise ValueError(f"{self.name}: payload decompresses to {len(out)} bytes, header "
                             f"field inner size is {size}")
        return torch.frombuffer(bytearray(out), dtype=torch.uint8).to(payload.device)

    def decode(self, payload: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        return self.inner.decode(self._inner(payload), support=support, crossing=crossing)

    def support_of(self, payload: Tensor) -> Optional[Tensor]:
        return self.inner.support_of(self._inner(payload))

    def state_dict(self) -> Dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def state_bytes(self) -> int:
        return self.inner.state_bytes()

    def observe(self, x: Tensor, crossing: Crossing) -> None:
        self.inner.observe(x, crossing)


def _unzlib(body: bytes, size: int) -> bytes:
    """One zlib stream, decompressed into at most size + 1 bytes (the output grows as it comes)."""
    d = zlib.decompressobj()
    out = d.decompress(body, size + 1)
    if len(out) == size and (not d.eof or d.unused_data or d.unconsumed_tail):
        raise ValueError(f"Entropy: the zlib stream is truncated or followed by other bytes "
                         f"(inner size {size})")
    return out


def _unzstd(body: bytes, size: int) -> bytes:
    """One zstd frame of at most size bytes: a size no frame of this length can hold is refused
    before the output buffer (size bytes) is allocated."""
    if size > ZSTD_MAX_RATIO * len(body):
        raise ValueError(f"Entropy: header field inner size {size} is more than a zstd frame of "
                         f"{len(body)} bytes can hold")
    return zstandard.ZstdDecompressor().decompress(body, max_output_size=size,
                                                   allow_extra_data=False)
