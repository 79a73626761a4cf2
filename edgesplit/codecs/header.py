"""The payload header: codec id, dtype, shape and codec fields, packed little-endian in front."""
import functools
import math
import struct
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Tuple

import torch
from torch import Tensor

from .sidecar import Sidecar

# codec ids (byte 0)
IDENTITY, QUANTIZE, TOPK, TOPK_QUANTIZE = 1, 2, 3, 4
QUANTIZE_GROUPED, TOPK_QUANTIZE_GROUPED, RANDTOPK, ENTROPY = 5, 6, 7, 8
DELTA = 16
CODEC_NAMES = {IDENTITY: "Identity", QUANTIZE: "Quantize", TOPK: "TopK",
               TOPK_QUANTIZE: "TopKQuantize", QUANTIZE_GROUPED: "Quantize (channel/group scales)",
               TOPK_QUANTIZE_GROUPED: "TopKQuantize (group scales)", RANDTOPK: "RandTopK",
               ENTROPY: "Entropy", DELTA: "Delta"}
# dtype codes (byte 1)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
# codec fields after the shape
QUANT_FIELDS = struct.Struct("<Bff")  # bits, offset (min), scale
TOPK_FIELDS = struct.Struct("<BI")  # index format (0 bitmap, 1 int32 indices), k
TOPKQ_FIELDS = struct.Struct("<BIBff")  # index format, k, bits, offset, scale
DELTA_FIELDS = struct.Struct("<II")  # bytes of the first-visit part, bytes of the delta part
# per-channel or per-group scales: bits, scale mode (CHANNEL, GROUP), channels or group size; the
# body starts with count float32 offsets, then count float32 scales, then the packed codes
GROUPQ_FIELDS = struct.Struct("<BBI")
TOPKQG_FIELDS = struct.Struct("<BIBI")  # index format, k, bits, group size (then as GROUPQ)
CHANNEL, GROUP = 1, 2
# the entropy stage's whole header: codec id, method (ZLIB, ZSTD), bytes of the inner payload
ENTROPY_HEADER = struct.Struct("<BBI")
ZLIB, ZSTD = 1, 2
BITMAP, INDICES = 0, 1
MAX_DIM = 2 ** 32 - 1
# Caps a decoder checks before it allocates anything: a header declaring more is corrupt or
# hostile. Boundary tensors are activations and gradients (4-D for images): 16 dimensions and
# 2**31 elements leave room.
MAX_NDIM = 16
MAX_NUMEL = 2 ** 31
# The most bytes any codec's payload takes per element of its tensor (float64 values beside int32
# indices: 12; a float32 offset and scale per element, group size 1, beside 16-bit codes and int32
# indices: 14), and beyond that for headers (the delta codec's two parts each have one): a peer's
# payload that declares more than payload_bound of the largest tensor its boundary carries is
# refused before it is decoded or decompressed.
MAX_BYTES_PER_ELEMENT = 16
PAYLOAD_OVERHEAD = 4096


def payload_bound(numel: int) -> int:
    """The most bytes a payload of any codec takes for a tensor of `numel` elements."""
    return MAX_BYTES_PER_ELEMENT * numel + PAYLOAD_OVERHEAD


# The most elements a payload being decoded may declare (decode_header checks it before anything of
# that size is allocated): MAX_NUMEL, or less while a boundary decodes a peer's payload (limit_numel).
_NUMEL_LIMIT: ContextVar[int] = ContextVar("numel_limit", default=MAX_NUMEL)


@contextmanager
def limit_numel(numel: int) -> Iterator[None]:
    """Payloads decoded meanwhile (in this thread) may declare at most `numel` elements."""
    token = _NUMEL_LIMIT.set(min(numel, MAX_NUMEL))
    try:
        yield
    finally:
        _NUMEL_LIMIT.reset(token)


@dataclass
class PayloadHeader:
    """The decoded header: what was encoded and where the body starts."""
    codec: int
    dtype: torch.dtype
    shape: Tuple[int, ...]
    fields: tuple
    size: int  # header bytes: the body starts here

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def common_size(ndim: int) -> int:
    """Bytes of the codec-independent part: id, dtype, ndim, ndim x uint32."""
    return 3 + 4 * ndim


def encode_header(codec: int, dtype: torch.dtype, shape: Tuple[int, ...],
                  fields: bytes) -> bytes:
    """The header bytes of a payload."""
    if dtype not in DTYPE_CODES:
        raise TypeError(f"{CODEC_NAMES[codec]}: unsupported dtype {dtype}, "
                        f"expected one of {sorted(str(d) for d in DTYPE_CODES)}")
    if len(shape) > MAX_NDIM or any(d > MAX_DIM for d in shape) or math.prod(shape) > MAX_NUMEL:
        raise ValueError(f"{CODEC_NAMES[codec]}: shape {tuple(shape)} too large for the header")
    return struct.pack(f"<BBB{len(shape)}I", codec, DTYPE_CODES[dtype], len(shape),
                       *shape) + fields


# The header bytes of a payload made off the CPU, beside it: its decoder in the same process
# reads them there instead of from the device (a read would wait for it).
_HOST_HEADERS: Sidecar[bytes] = Sidecar()


@functools.lru_cache(maxsize=256)
def device_head(header: bytes, device: torch.device) -> Tensor:
    """The header as a uint8 tensor on `device`, made once: a copy from pageable host memory on
    every crossing would wait for the device's queue. Headers repeat every step."""
    return torch.frombuffer(bytearray(header), dtype=torch.uint8).to(device)


def new_payload(header: bytes, body: int, device: torch.device) -> Tensor:
    """A payload of len(header) + body bytes on `device` with the header filled in."""
    payload = torch.empty(len(header) + body, dtype=torch.uint8, device=device)
    if device.type == "cpu":
        payload[:len(header)].copy_(torch.frombuffer(bytearray(header), dtype=torch.uint8))
        return payload
    payload[:len(header)].copy_(device_head(header, device))
    return _HOST_HEADERS.put(payload, header)


def _read(payload: Tensor, start: int, count: int) -> bytes:
    if payload.numel() < start + count:
        raise ValueError(f"payload of {payload.numel()} bytes is truncated (header needs "
                         f"{start + count})")
    host = _HOST_HEADERS.get(payload)
    if host is not None and start + count <= len(host):
        return host[start:start + count]
    return bytes(payload[start:start + count].cpu().tolist())


def decode_header(payload: Tensor, codec: int, fields: struct.Struct) -> PayloadHeader:
    """Parse a payload's header, checking it was made by `codec`."""
    if payload.dtype != torch.uint8 or payload.dim() != 1:
        raise TypeError(f"{CODEC_NAMES[codec]}: a payload is a 1-D uint8 tensor, got "
                        f"{payload.dtype} of shape {tuple(payload.shape)}")
    raw = _read(payload, 0, 3)
    got, dcode, ndim = raw[0], raw[1], raw[2]
    if got != codec:
        raise ValueError(f"{CODEC_NAMES[codec]}: payload was made by codec id {got} "
                         f"({CODEC_NAMES.get(got, 'unknown')})")
    if dcode not in CODE_DTYPES:
        raise ValueError(f"{CODEC_NAMES[codec]}: unknown dtype code {dcode} in payload (allowed: "
                         f"{', '.join(f'{c} {d}' for c, d in sorted(CODE_DTYPES.items()))})")
    if ndim > MAX_NDIM:
        raise ValueError(f"{CODEC_NAMES[codec]}: payload declares ndim {ndim}, at most {MAX_NDIM}")
    size = common_size(ndim) + fields.size
    raw = _read(payload, 3, size - 3)
    shape = struct.unpack_from(f"<{ndim}I", raw, 0)
    limit = _NUMEL_LIMIT.get()
    if math.prod(shape) > limit:
        raise ValueError(f"{CODEC_NAMES[codec]}: payload declares shape {shape} of "
                         f"{math.prod(shape)} elements, at most {limit}")
    values = fields.unpack_from(raw, 4 * ndim)
    return PayloadHeader(codec, CODE_DTYPES[dcode], tuple(shape), values, size)


def check_body(name: str, body: int, expected: int) -> None:
    """ValueError unless the body after the header is exactly `expected` bytes (no trailing
    bytes, nothing missing)."""
    if body != expected:
        raise ValueError(f"{name}: payload body has {body} bytes, expected {expected}")


def _finite_limit(dtype: torch.dtype) -> float:
    """The largest value that decodes (in float32, then cast to dtype) to a finite one: the max
    plus a little under half an ulp, which rounds down to the max (so a legit payload whose
    rounded scale overshoots the max by a hair still passes)."""
    return min(torch.finfo(d).max * (1 + torch.finfo(d).eps / 8) for d in (torch.float32, dtype))


def check_quant_fields(name: str, dtype: torch.dtype, bits: int, offset: float,
                       scale: float) -> None:
    """ValueError naming the field unless bits is 1..16, offset and scale are finite, scale >= 0,
    and every code decodes to a finite value (computed in float32, then in `dtype`), as every
    encoder's fields do."""
    if not 1 <= bits <= 16:
        raise ValueError(f"{name}: payload field bits is {bits}, allowed 1..16")
    if not math.isfinite(offset):
        raise ValueError(f"{name}: payload field offset is {offset}, must be finite")
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"{name}: payload field scale is {scale}, must be finite and >= 0")
    # the decoded values run from offset (code 0) to offset + top * scale (the largest code)
    if max(abs(offset), abs(offset + scale * (2 ** bits - 1))) > _finite_limit(dtype):
        raise ValueError(f"{name}: payload fields offset {offset} and scale {scale} overflow "
                         f"{dtype} for {bits}-bit codes")


def check_quant_params(name: str, dtype: torch.dtype, bits: int, offsets: Tensor,
                       scales: Tensor) -> None:
    """check_quant_fields for every (offset, scale) pair of a per-channel/per-group payload (bits
    checked already), at once; the message names the first bad group."""
    off, scale = offsets.double(), scales.double()
    last = off + scale * (2 ** bits - 1)
    limit = _finite_limit(dtype)
    ok = torch.isfinite(off) & torch.isfinite(scale) & (scale >= 0) & (off.abs() <= limit) \
        & (last.abs() <= limit)
    if not bool(ok.all()):
        i = int(torch.argmin(ok.to(torch.uint8)))
        raise ValueError(f"{name}: payload group {i} has offset {float(off[i])} and scale "
                         f"{float(scale[i])}: must be finite, scale >= 0, and every {bits}-bit "
                         f"code must decode to a finite {dtype}")
