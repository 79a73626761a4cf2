"""Codecs: exact payload bytes against the reference, round trips, edge cases, gradient rules."""
import math
import struct
from typing import Callable

import pytest
import torch
from hydra.utils import instantiate

import edgesplit.codecs.base as base
import edgesplit.codecs.select as select
from tests.codec_reference import ref_encode, ref_pack, ref_topk_mask
from edgesplit.boundary.boundary import Boundary
from edgesplit.boundary.layer import BoundaryLayer
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs
from edgesplit.codecs import Codec, Identity, NonFiniteError, Quantize, TopK, TopKQuantize
from edgesplit.codecs.bitpack import code_dtype, pack_codes_into, packed_size, unpack_codes_from
from edgesplit.codecs.masks import pack_mask_into, unpack_mask
from edgesplit.codecs.topk import k_for

KINDS = {"identity": Identity, "quantize": Quantize, "topk": TopK, "topk_quantize": TopKQuantize}


def make(kind: str, ratio: float = 0.1, bits: int = 8) -> Codec:
    if kind == "identity":
        return Identity()
    if kind == "quantize":
        return Quantize(bits)
    if kind == "topk":
        return TopK(ratio)
    return TopKQuantize(ratio, bits)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """All codes packed into a new buffer of ceil(n*bits/8) bytes."""
    out = torch.empty(packed_size(codes.numel(), bits), dtype=torch.uint8)
    pack_codes_into(codes.reshape(-1), bits, out, 0, codes.numel())
    return out


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """All n codes of a packed stream."""
    return unpack_codes_from(packed, bits, n, 0, n).clone()


def wire(p: torch.Tensor) -> bytes:
    assert p.dtype == torch.uint8 and p.dim() == 1
    return p.numpy().tobytes()


def hdr(ndim: int) -> int:
    return 3 + 4 * ndim


def quant_fields(p: torch.Tensor, ndim: int) -> tuple:
    """(bits, offset, scale) of a Quantize payload."""
    return struct.unpack_from("<Bff", wire(p), hdr(ndim))


def inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    relu = torch.randn(8, 16, 16, 16, generator=g).relu()
    return {
        "random": torch.randn(3, 50, 7, generator=g),
        "tied": torch.randint(-3, 4, (40, 60), generator=g).float(),
        "relu": relu,
        "tiny": torch.randn(1, generator=g),
        "five": torch.randn(5, generator=g),
        "large": torch.randn(64, 32, 16, 16, generator=g),  # > select.SMALL: the sampled path
        "zeros": torch.zeros(4, 9),
        "const": torch.full((77,), -2.5),
    }


# --- bit packing -------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_matches_reference_and_roundtrips(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    for n in (1, 7, 8, 9, 23, 64, 1001):
        codes = torch.randint(0, 2 ** bits, (n,), generator=g, dtype=torch.int64)
        packed = pack(codes.to(code_dtype(bits)), bits)
        assert packed.numel() == packed_size(n, bits) == math.ceil(n * bits / 8)
        assert wire(packed) == ref_pack(codes.numpy(), bits)
        assert unpack(packed, bits, n).tolist() == codes.tolist()


def test_pack_known_bytes() -> None:
    assert pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 2).tolist() == [0b111001]
    assert pack(torch.tensor([5, 1], dtype=torch.uint8), 3).tolist() == [0b001101]
    assert pack(torch.tensor([0x1AB, 0x2CD], dtype=torch.int32), 10).tolist() == \
        [0xAB, 0xCD, 0b1001]
    assert pack(torch.tensor([0x1234], dtype=torch.int32), 16).tolist() == [0x34, 0x12]
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    bitmap = torch.zeros(2, dtype=torch.uint8)
    pack_mask_into(mask, bitmap)
    assert bitmap.tolist() == [0x81, 0x01]
    assert unpack_mask(bitmap, 9).tolist() == mask.tolist()


# --- byte-identical to the reference -----------------------------------------------------------

@pytest.mark.parametrize("name", list(inputs()))
def test_payloads_match_reference(name: str) -> None:
    x = inputs()[name]
    assert wire(Identity().encode(x)) == ref_encode("identity", x)
    for bits in (1, 3, 8, 12, 16):
        assert wire(Quantize(bits).encode(x)) == ref_encode("quantize", x, bits=bits), bits
    for ratio in (0.01, 0.1, 0.5, 0.6, 1.0):
        assert wire(TopK(ratio).encode(x)) == ref_encode("topk", x, ratio=ratio), ratio
        assert wire(TopKQuantize(ratio, 5).encode(x)) == \
            ref_encode("topk_quantize", x, ratio=ratio, bits=5), ratio


def test_stem_sized_tensor_matches_reference() -> None:
    x = torch.randn(256, 32, 32, 32, generator=torch.Generator().manual_seed(1)).relu()
    assert wire(TopK(0.1).encode(x)) == ref_encode("topk", x, ratio=0.1)
    assert wire(Quantize(8).encode(x)) == ref_encode("quantize", x, bits=8)


@pytest.mark.parametrize("host_path", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_chunked_and_sampled_paths_match_reference(monkeypatch: pytest.MonkeyPatch,
                                                   seed: int, host_path: bool) -> None:
    # small chunks and a small, deliberately too tight sample: every fallback branch runs, on the
    # host (CPU: numpy, chunks) and the device (GPU: torch, one piece) paths, on 1 and 2 threads
    monkeypatch.setattr(base, "CPU_CHUNK", 64)
    monkeypatch.setattr(select, "SMALL", 100)
    monkeypatch.setattr(select, "SAMPLE", 32)
    monkeypatch.setattr(select, "SIGMAS", 0.0 if seed % 2 else 3.0)
    monkeypatch.setattr(base, "HOST_PATH", host_path)
    g = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1 + seed % 2)
    try:
        for x in (torch.randn(1003, generator=g), torch.randint(0, 3, (517,), generator=g).float(),
                  torch.randn(20, 33, generator=g).relu().half(),
                  torch.randint(-2, 3, (9, 40), generator=g).bfloat16(),
                  torch.randn(300, generator=g, dtype=torch.float64).relu()):
            for ratio in (0.01, 0.05, 0.3, 0.7):
                p = TopK(ratio).encode(x)
                assert wire(p) == ref_encode("topk", x, ratio=ratio)
                assert wire(TopKQuantize(ratio, 11).encode(x)) == \
                    ref_encode("topk_quantize", x, ratio=ratio, bits=11)
                keep = ref_topk_mask(x.reshape(-1))[:k_for(ratio, x.numel())]
                ref = torch.zeros(x.numel(), dtype=x.dtype)
                ref[keep] = x.reshape(-1)[keep]
                assert torch.equal(TopK(ratio).decode(p), ref.view(x.shape))
                support = torch.zeros(x.numel(), dtype=torch.bool)
                support[keep] = True
                assert torch.equal(TopK(ratio).support_of(p), support.view(x.shape))
            for bits in (3, 8, 9, 16):
                assert wire(Quantize(bits).encode(x)) == ref_encode("quantize", x, bits=bits)
                p = Quantize(bits).encode(x)
                assert torch.equal(Quantize(bits).decode(p), _ref_dequantize(x, p, bits))
    finally:
        torch.set_num_threads(threads)


def _ref_dequantize(x: torch.Tensor, p: torch.Tensor, bits: int) -> torch.Tensor:
    _, offset, scale = quant_fields(p, x.dim())
    codes = unpack(p[hdr(x.dim()) + 9:], bits, x.numel()).to(torch.float32)
    return (codes * scale + offset).to(x.dtype).view(x.shape)


# --- round trips and sizes ---------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 17))
def test_quantize_roundtrip_error_and_size(bits: int) -> None:
    x = torch.randn(3, 50, 7, generator=torch.Generator().manual_seed(bits)) * 3
    p = Quantize(bits).encode(x)
    assert p.numel() == hdr(3) + 9 + math.ceil(1050 * bits / 8)
    got_bits, offset, scale = quant_fields(p, 3)
    assert (got_bits, offset) == (bits, x.min().item())
    assert scale == pytest.approx((x.max() - x.min()).item() / (2 ** bits - 1), rel=1e-6)
    y = Quantize(bits).decode(p)
    assert y.shape == x.shape and y.dtype == x.dtype
    eps = 4 * torch.finfo(torch.float32).eps * x.abs().max().item()
    assert (y - x).abs().max().item() <= scale / 2 + eps


def test_identity_roundtrip_and_size() -> None:
    x = torch.randn(2, 3, 4)
    p = Identity().encode(x)
    assert p.numel() == hdr(3) + 24 * 4
    assert list(p[:hdr(3)]) == [1, 0, 3, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]
    assert torch.equal(Identity().decode(p), x)
    assert Identity().support_of(p) is None
    assert Identity().encode(torch.tensor([float("nan")])).numel() == hdr(1) + 4  # unchecked


def test_topk_roundtrip_size_and_support() -> None:
    x = torch.tensor([[0.5, -3.0, 1.0, 2.0], [-0.1, 0.0, 4.0, -2.0]])
    p = TopK(0.25).encode(x)  # k = 2, n = 8: bitmap 1 byte < 8 bytes of indices
    assert p.numel() == hdr(2) + 5 + 1 + 2 * 4
    assert wire(p)[hdr(2):hdr(2) + 6] == struct.pack("<BI", 0, 2) + bytes([0b01000010])
    y = TopK(0.25).decode(p)
    assert y.tolist() == [[0, -3.0, 0, 0], [0, 0, 4.0, 0]]
    assert TopK(0.25).support_of(p).tolist() == [[False, True, False, False],
                                                 [False, False, True, False]]
    # k = 4 at flat 1, 3, 6, 7: values -3, 2, 4, -2 -> offset -3, scale 7/3, codes 0 2 3 0
    q = TopKQuantize(0.5, 2).encode(x)
    assert q.numel() == hdr(2) + 14 + 1 + 1
    fmt, k, bits, offset, scale = struct.unpack_from("<BIBff", wire(q), hdr(2))
    assert (fmt, k, bits, offset) == (0, 4, 2, -3.0)
    assert wire(q)[-2:] == bytes([0b11001010, 0b00111000])
    assert TopKQuantize(0.5, 2).support_of(q).view(-1).tolist() == \
        [False, True, False, True, False, False, True, True]
    y = TopKQuantize(0.5, 2).decode(q)
    assert y[0, 0] == 0 and y[1, 2].item() == pytest.approx(4.0)


def test_bitmap_vs_indices_crossover() -> None:
    x = torch.randn(800, generator=torch.Generator().manual_seed(3))
    for ratio, k, fmt, index_bytes in ((0.03, 24, 1, 96), (0.03125, 25, 0, 100)):
        assert k_for(ratio, 800) == k
        p = TopK(ratio).encode(x)
        assert p.numel() == hdr(1) + 5 + index_bytes + 4 * k
        assert struct.unpack_from("<BI", wire(p), hdr(1)) == (fmt, k)
        ref = torch.zeros(800)
        keep = ref_topk_mask(x)[:k]
        ref[keep] = x[keep]
        assert torch.equal(TopK(ratio).decode(p), ref)
        assert torch.equal(TopK(ratio).support_of(p), ref != 0)
        q = TopKQuantize(ratio, 4).encode(x)
        assert q.numel() == hdr(1) + 14 + index_bytes + math.ceil(4 * k / 8)
        assert torch.equal(TopKQuantize(ratio, 4).support_of(q), ref != 0)


def test_ties_lowest_index_wins() -> None:
    x = torch.tensor([1.0, -2.0, 2.0, 1.0, -1.0, 2.0, 0.0, 1.0])
    assert TopK(0.5).support_of(TopK(0.5).encode(x)).tolist() == \
        [True, True, True, False, False, True, False, False]
    relu = torch.tensor([0.0, 0.0, 3.0, 0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0])
    mask = TopK(0.6).support_of(TopK(0.6).encode(relu))  # 3 positives + the first 3 zeros
    assert mask.tolist() == [True, True, True, True, True, False, False, True, False, False]
    assert k_for(0.7, 10) == 7 and k_for(0.1, 8388608) == 838861 and k_for(0.1, 3) == 1


def test_constant_and_zero_tensors() -> None:
    for x in (torch.zeros(3, 5), torch.full((17,), 7.25), torch.full((4,), -1e-30)):
        for bits in (1, 8, 13):
            p = Quantize(bits).encode(x)
            assert quant_fields(p, x.dim())[1:] == (x.view(-1)[0].item(), 0.0)
            assert torch.equal(Quantize(bits).decode(p), x)
        assert torch.equal(TopK(0.5).decode(TopK(0.5).encode(x)).view(-1)[:1], x.view(-1)[:1])
        y = TopKQuantize(0.2, 4).decode(TopKQuantize(0.2, 4).encode(x))
        assert torch.equal(y.view(-1)[:1], x.view(-1)[:1])


def test_fewer_than_one_over_ratio_keeps_one() -> None:
    x = torch.tensor([0.1, -0.9, 0.3])
    p = TopK(0.1).encode(x)
    assert TopK(0.1).decode(p).tolist() == [0.0, pytest.approx(-0.9), 0.0]
    assert TopKQuantize(0.01, 8).decode(TopKQuantize(0.01, 8).encode(x)).tolist() == \
        [0.0, pytest.approx(-0.9), 0.0]


def test_empty_tensor() -> None:
    x = torch.empty(0, 3)
    for kind in KINDS:
        c = make(kind)
        y = c.decode(c.encode(x))
        assert y.shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype: torch.dtype) -> None:
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(5)).to(dtype)
    for kind in KINDS:
        c = make(kind, 0.2, 10)
        y = c.decode(c.encode(x))
        assert y.dtype == dtype and y.shape == x.shape
    p = Identity().encode(x)
    assert p.numel() == hdr(2) + 240 * 2 and p[1].item() == {torch.float16: 1}.get(dtype, 2)
    assert torch.equal(TopK(0.2).decode(TopK(0.2).encode(x)),
                       torch.where(TopK(0.2).support_of(TopK(0.2).encode(x)), x, 0))
    _, _, scale = quant_fields(Quantize(10).encode(x), 2)
    err = (Quantize(10).decode(Quantize(10).encode(x)).float() - x.float()).abs().max()
    assert err.item() <= scale / 2 + torch.finfo(dtype).eps * x.float().abs().max().item()


def test_non_contiguous_same_as_contiguous() -> None:
    x = torch.randn(30, 20, generator=torch.Generator().manual_seed(6)).t()
    assert not x.is_contiguous()
    for kind in KINDS:
        c = make(kind, 0.3, 6)
        assert wire(c.encode(x)) == wire(c.encode(x.contiguous()))
        assert torch.equal(c.decode(c.encode(x)), c.decode(c.encode(x.contiguous())))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_raises(bad: float) -> None:
    x = torch.randn(100)
    x[37] = bad
    for kind in ("quantize", "topk", "topk_quantize"):
        with pytest.raises(NonFiniteError, match="NaN or inf") as err:
            make(kind).encode(x)
        assert "\n" not in str(err.value)
    with pytest.raises(NonFiniteError):
        Quantize(8).encode(x.half())


@pytest.mark.parametrize("where", [0, 500, 999])
def test_non_finite_in_any_chunk_raises(monkeypatch: pytest.MonkeyPatch, where: int) -> None:
    monkeypatch.setattr(base, "CPU_CHUNK", 64)
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(1000)
        x[where] = bad
        for kind in ("topk", "topk_quantize"):
            with pytest.raises(NonFiniteError):
                make(kind).encode(x)


def test_support_roundtrips() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 25, generator=g)
    support = torch.rand(4, 25, generator=g) > 0.6
    count = int(support.sum())
    p = Identity().encode(x, support=support)
    assert p.numel() == hdr(1) + 4 * count
    assert torch.equal(Identity().decode(p, support=support), torch.where(support, x, 0))
    p = Quantize(5).encode(x, support=support)
    assert p.numel() == hdr(1) + 9 + math.ceil(count * 5 / 8)
    _, offset, scale = quant_fields(p, 1)
    assert offset == x[support].min().item()
    y = Quantize(5).decode(p, support=support)
    assert torch.equal(y[~support], torch.zeros(int((~support).sum())))
    assert (y - x)[support].abs().max().item() <= scale / 2 + 1e-6
    y = TopK(0.5).decode(TopK(0.5).encode(x, support=support), support=support)
    assert int((y != 0).sum()) == math.ceil(count / 2) and torch.equal(y[~support].abs().sum(),
                                                                       torch.tensor(0.0))
    with pytest.raises(ValueError, match="values but the support has"):
        Identity().decode(Identity().encode(x, support=support), support=support[:2])
    with pytest.raises(ValueError, match="support must be a bool tensor of shape"):
        Identity().encode(x, support=support.float())


@pytest.mark.parametrize("cls,kwargs,message", [
    (Quantize, {"bits": 0}, "Quantize: bits must be in 1..16, got 0"),
    (Quantize, {"bits": 17}, "Quantize: bits must be in 1..16, got 17"),
    (Quantize, {"bits": 8.0}, "Quantize: bits must be in 1..16, got 8.0"),
    (TopK, {"ratio": 0}, "TopK: ratio must be in (0, 1], got 0"),
    (TopK, {"ratio": 1.5}, "TopK: ratio must be in (0, 1], got 1.5"),
    (TopK, {"ratio": "a"}, "TopK: ratio must be in (0, 1], got 'a'"),
    (TopKQuantize, {"ratio": 0.1, "bits": 20}, "TopKQuantize: bits must be in 1..16, got 20"),
    (TopKQuantize, {"ratio": -1, "bits": 8}, "TopKQuantize: ratio must be in (0, 1], got -1"),
])
def test_invalid_args(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert str(err.value) == message


def test_hydra_instantiate() -> None:
    assert isinstance(instantiate({"_target_": "edgesplit.codecs.Identity"}), Identity)
    assert instantiate({"_target_": "edgesplit.codecs.Quantize", "bits": 4}).bits == 4
    assert instantiate({"_target_": "edgesplit.codecs.TopK", "ratio": 0.1}).ratio == 0.1
    c = instantiate({"_target_": "edgesplit.codecs.TopKQuantize", "ratio": 0.2, "bits": 6})
    assert (c.ratio, c.bits) == (0.2, 6)


def test_wrong_payload_rejected() -> None:
    p = Quantize(8).encode(torch.randn(10))
    with pytest.raises(ValueError, match="made by codec id 2"):
        TopK(0.1).decode(p)
    with pytest.raises(ValueError, match="expected"):
        Quantize(8).decode(p[:-1])


# --- gradient rules ----------------------------------------------------------------------------

def crossing(fwd: Codec, grad_codec: Codec) -> Callable[[torch.Tensor], torch.Tensor]:
    """The real in-process boundary (edgesplit.boundary.boundary) with these codecs, as a function."""
    return BoundaryLayer(Boundary("front", BoundaryCodecs(fwd, grad_codec, reuses_support=True),
                                  CommMeter()))


def test_gradient_identity_is_identity() -> None:
    x = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: crossing(Identity(), Identity())(t), (x,))


def test_gradient_prune_is_masked() -> None:
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    x.requires_grad_(True)
    # locally f(x) = x * mask: the numerical Jacobian is diag(mask), as the backward
    assert torch.autograd.gradcheck(lambda t: crossing(TopK(0.3), Identity())(t), (x,))
    g = torch.randn(5, 8, dtype=torch.float64)
    crossing(TopK(0.3), Identity())(x).backward(g)
    mask = TopK(0.3).support_of(TopK(0.3).encode(x.detach()))
    assert int(mask.sum()) == 12 and torch.equal(x.grad, g * mask)


def test_gradient_prune_quantize_is_masked_then_quantized() -> None:
    x = torch.randn(40, generator=torch.Generator().manual_seed(9), requires_grad=True)
    g = torch.randn(40, generator=torch.Generator().manual_seed(10))
    crossing(TopKQuantize(0.25, 8), Quantize(8))(x).backward(g)
    mask = TopK(0.25).support_of(TopK(0.25).encode(x.detach()))
    kept = g[mask]
    scale = (kept.max() - kept.min()).item() / 255
    assert torch.equal(x.grad[~mask], torch.zeros(30))
    assert (x.grad - g)[mask].abs().max().item() <= scale / 2 + 1e-6
