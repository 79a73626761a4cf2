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
# deflate codes at most 258 bytes in 2 bits: no zlib stream inflates more than 1032 bytes per byte
ZLIB_MAX_RATIO = 1100
CHUNK = 1 << 20  # zlib: inflated per step: memory follows the real output, never the declared size
ZSTD_STEP = 64  # zstd: compressed bytes fed per step (at most 4 MiB out)
# zstd decodes a frame in one call into a buffer of the declared size up to this size (bounded
# memory all the same); only larger declared sizes go step by step (3.7x slower on a 2 MB payload)
ZSTD_ONE_SHOT = 16 << 20


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


def _plausible(method: str, body: bytes, size: int, ratio: int) -> None:
    """A declared size no stream of this length can hold is refused before anything is decoded."""
    if size > ratio * len(body) + 64:
        raise ValueError(f"Entropy: header field inner size {size} is more than a {method} "
                         f"{'frame' if method == 'zstd' else 'stream'} of {len(body)} bytes can hold")


def _too_long(method: str, size: int) -> ValueError:
    return ValueError(f"Entropy: the {method} stream holds more than its header field inner size "
                      f"{size}, or is followed by other bytes")


def _unzlib(body: bytes, size: int) -> bytes:
    """One zlib stream, inflated CHUNK bytes at a time into at most size bytes (zlib's bounded
    API): a stream that holds more is refused as soon as it passes size."""
    _plausible("zlib", body, size, ZLIB_MAX_RATIO)
    d = zlib.decompressobj()
    out = bytearray(d.decompress(body, min(size, CHUNK)))
    while not d.eof and d.unconsumed_tail and len(out) < size:
        out += d.decompress(d.unconsumed_tail, min(size - len(out), CHUNK))
    if len(out) == size and (not d.eof or d.unused_data or d.unconsumed_tail):
        raise _too_long("zlib", size)
    return bytes(out)


def _unzstd(body: bytes, size: int) -> bytes:
    """One zstd frame of at most size bytes: in one call up to ZSTD_ONE_SHOT, else fed ZSTD_STEP
    bytes at a time (at most ZSTD_STEP * ZSTD_MAX_RATIO bytes come out of each): no buffer of a
    larger declared size is allocated before the frame shows it holds that much, and one that
    holds more is refused once it does."""
    _plausible("zstd", body, size, ZSTD_MAX_RATIO)
    if size <= ZSTD_ONE_SHOT:
        try:
            # a frame's own content size sizes zstd's buffer: it must be the header's (or absent)
            if zstandard.frame_content_size(body) not in (-1, size):
                raise _too_long("zstd", size)
            return zstandard.ZstdDecompressor().decompress(body, max_output_size=size,
                                                           allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise ValueError(f"Entropy: the zstd frame is corrupt, truncated or followed by other "
                             f"bytes (inner size {size}): {e}") from None
    d = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    for start in range(0, len(body), ZSTD_STEP):
        out += d.decompress(body[start:start + ZSTD_STEP])
        if len(out) > size or (d.eof and (d.unused_data or start + ZSTD_STEP < len(body))):
            raise _too_long("zstd", size)
        if d.eof:
            break
    if not d.eof:
        raise ValueError(f"Entropy: the zstd frame is truncated (inner size {size})")
    return bytes(out)
