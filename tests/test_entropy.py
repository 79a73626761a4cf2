"""The entropy stage: lossless round trips around every codec, its header and byte counts, the
counters of bits per element, delegation to the inner codec, and corrupt streams refused."""
import struct
import zlib
from typing import Any, Dict, Optional

import pytest
import torch
import zstandard
from torch import Tensor

from tests.codec_reference import ref_encode, ref_entropy
from edgesplit.boundary.boundary import Boundary
from edgesplit.boundary.layer import BoundaryLayer
from edgesplit.codecs import Codec, Crossing, Entropy, Identity, Quantize, RandTopK, TopK
from edgesplit.codecs import TopKQuantize
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs

METHODS = ["zlib", "zstd"]
INNER = [Identity(), Quantize(4), Quantize(8, "stochastic", "group", 64), TopK(0.1),
         TopKQuantize(0.2, 4), RandTopK(0.1, 0.2)]


def wire(p: Tensor) -> bytes:
    return p.numpy().tobytes()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("inner", INNER, ids=repr)
def test_lossless_around_every_codec(method: str, inner: Codec) -> None:
    x = torch.randn(8, 16, 6, 6, generator=torch.Generator().manual_seed(1)).relu()
    c = Entropy(inner, method)
    crossing = Crossing(key=3)
    p = c.encode(x, crossing=crossing)
    q = inner.encode(x, crossing=crossing)
    assert p.dtype == torch.uint8 and p.dim() == 1
    raw = wire(p)
    assert struct.unpack_from("<BBI", raw) == (8, {"zlib": 1, "zstd": 2}[method], q.numel())
    # the bytes counted are the entropy-coded ones: the payload is the header and the stream
    stream = zlib.decompress(raw[6:]) if method == "zlib" else \
        zstandard.ZstdDecompressor().decompress(raw[6:], max_output_size=q.numel())
    assert stream == wire(q) and p.numel() == 6 + len(raw[6:])
    assert torch.equal(c.decode(p, crossing=crossing), inner.decode(q, crossing=crossing))
    mask, inner_mask = c.support_of(p), inner.support_of(q)
    assert (mask is None) == (inner_mask is None)
    assert mask is None or torch.equal(mask, inner_mask)
    assert c.random == inner.random and c.per_sample == inner.per_sample


@pytest.mark.parametrize("method", METHODS)
def test_payload_is_the_oracles_and_compresses(method: str) -> None:
    x = torch.randn(16, 8, 8, 8, generator=torch.Generator().manual_seed(2)).relu()
    for inner, kind, kwargs in ((Quantize(4), "quantize", {"bits": 4}),
                                (TopK(0.1), "topk", {"ratio": 0.1})):
        p = Entropy(inner, method).encode(x)
        assert wire(p) == ref_entropy(ref_encode(kind, x, **kwargs), method)
    zeros = Entropy(Quantize(8), method).encode(torch.zeros(64, 64))
    assert zeros.numel() < 100 < Quantize(8).encode(torch.zeros(64, 64)).numel() // 40
    relu = Entropy(Quantize(4), method)  # half the codes are 0 after a ReLU
    assert relu.encode(x).numel() < 0.9 * Quantize(4).encode(x).numel()


class Stateful(Identity):
    """An Identity that keeps a counter as its state, and draws and keeps per-sample state."""
    random = True
    per_sample = True

    def __init__(self) -> None:
        self.count = 0

    def encode(self, x: Tensor, support: Optional[Tensor] = None,
               crossing: Optional[Crossing] = None) -> Tensor:
        self.count += 1
        return super().encode(x, support, crossing)

    def state_dict(self) -> Dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.count = state["count"]


def test_state_and_flags_are_the_inner_codecs() -> None:
    c = Entropy(Stateful(), "zlib")
    assert c.random and c.per_sample
    c.encode(torch.ones(3))
    assert c.state_dict() == {"count": 1}
    c.load_state_dict({"count": 7})
    assert c.inner.count == 7  # type: ignore[attr-defined]


def test_gradient_rule_through_the_entropy_stage() -> None:
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(8), requires_grad=True)
    codecs = BoundaryCodecs(Entropy(TopK(0.3), "zstd"), Entropy(Identity(), "zstd"), True)
    g = torch.randn(5, 8)
    BoundaryLayer(Boundary("front", codecs, CommMeter()))(x).backward(g)
    mask = TopK(0.3).support_of(TopK(0.3).encode(x.detach()))
    assert torch.equal(x.grad, g * mask)


@pytest.mark.parametrize("method", METHODS)
def test_corrupt_streams_are_refused(method: str) -> None:
    c = Entropy(Quantize(4), method)
    p = wire(c.encode(torch.randn(300, generator=torch.Generator().manual_seed(4))))
    size = struct.unpack_from("<I", p, 2)[0]

    def decode(raw: bytes) -> None:
        c.decode(torch.frombuffer(bytearray(raw), dtype=torch.uint8))

    for raw, message in (
            (p[:5], "truncated"),
            (p[:2] + struct.pack("<I", size + 1) + p[6:], "inner size"),
            (p[:2] + struct.pack("<I", size - 1) + p[6:], "inner size|corrupt"),
            (p[:2] + struct.pack("<I", 0) + p[6:], "inner size is 0"),
            (p + b"\0", "followed by other bytes|corrupt|unused data"),
            (p[:-3], "truncated|corrupt|inner size"),
            (bytes([8, 3]) + p[2:], "method is 3"),
            (bytes([2]) + p[1:], "made by codec id 2")):
        with pytest.raises(ValueError, match=message) as err:
            decode(raw)
        assert "\n" not in str(err.value)
    other = "zstd" if method == "zlib" else "zlib"
    with pytest.raises(ValueError, match="method is"):
        Entropy(Quantize(4), other).decode(torch.frombuffer(bytearray(p), dtype=torch.uint8))


def test_a_declared_size_no_zstd_frame_holds_is_refused_before_decompressing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = Entropy(Quantize(4), "zstd")
    p = wire(c.encode(torch.randn(300)))
    forged = p[:2] + struct.pack("<I", 2 ** 32 - 1) + p[6:]

    def never(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("decompressed a frame that cannot hold the declared size")
    monkeypatch.setattr(zstandard.ZstdDecompressor, "decompress", never)
    with pytest.raises(ValueError, match="more than a zstd frame of"):
        c.decode(torch.frombuffer(bytearray(forged), dtype=torch.uint8))


@pytest.mark.parametrize("kwargs, message", [
    ({"inner": Identity(), "method": "lz4"}, "Entropy: method must be one of zlib, zstd, got 'lz4'"),
    ({"inner": Identity(), "method": "zlib", "level": 12}, "Entropy: zlib level must be in 0..9"),
    ({"inner": "Identity", "method": "zlib"}, "Entropy: inner must be an edgesplit.codecs.Codec"),
])
def test_invalid_args(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Entropy(**kwargs)
