"""The codecs' device (GPU) path run on CPU tensors: byte for byte the host path's and the oracle's."""
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

import pytest
import torch
from torch import Tensor

import edgesplit.codecs.base as base
import edgesplit.codecs.fused as fused
import edgesplit.codecs.masks as masks
import edgesplit.codecs.select as select
from tests.codec_reference import ref_encode, ref_pack
from edgesplit.codecs import Codec, Crossing, Identity, NonFiniteError, Quantize, TopK, TopKQuantize
from edgesplit.codecs.bitpack import code_dtype, pack_codes_into, packed_size, unpack_codes_from
from edgesplit.codecs.header import BITMAP, INDICES

T = TypeVar("T")


class NoNumpy:
    """Stands in for numpy in masks.py on the device path: a GPU cannot take numpy's shortcuts."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the device path called numpy.{name}")


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], T]], Tuple[T, T]]:
    """paths(fn): (fn() on the host path, fn() on the device path), both on CPU tensors."""
    def run(fn: Callable[[], T]) -> Tuple[T, T]:
        host = fn()
        with monkeypatch.context() as m:
            m.setattr(base, "HOST_PATH", False)
            m.setattr(masks, "np", NoNumpy())
            device = fn()
        return host, device
    return run


def wire(p: Tensor) -> bytes:
    assert p.dtype == torch.uint8 and p.dim() == 1 and p.device.type == "cpu"
    return p.numpy().tobytes()


def inputs() -> Dict[str, Tensor]:
    """Tensors of every kind the contract names: ties, constants, zeros, half dtypes, strides."""
    g = torch.Generator().manual_seed(0)
    return {
        "random": torch.randn(3, 50, 7, generator=g),
        "relu": torch.randn(4, 8, 9, 9, generator=g).relu(),  # about half exactly 0: ties
        "tied": torch.randint(-3, 4, (40, 60), generator=g).float(),
        "tiny": torch.randn(1, generator=g),
        "five": torch.randn(5, generator=g),
        "zeros": torch.zeros(4, 9),
        "const": torch.full((77,), -2.5),
        "fp16": torch.randn(6, 41, generator=g).half(),
        "bf16": torch.randint(-2, 3, (9, 40), generator=g).bfloat16(),
        "fp64": torch.randn(300, generator=g, dtype=torch.float64).relu(),
        "transposed": torch.randn(30, 20, generator=g).t(),
        "strided": torch.randn(16, 64, generator=g)[::3, 1::2],
        "half_strided": torch.randn(20, 33, generator=g).half().t(),
    }


def codecs() -> Iterator[Codec]:
    """Every codec whose bytes are the same on every device (nearest rounding)."""
    yield Identity()
    for bits in range(1, 17):
        yield Quantize(bits)
    for ratio in (0.01, 0.1, 0.5, 1.0):  # 0.01 sends indices on the larger inputs, others bitmaps
        yield TopK(ratio)
        for bits in (1, 5, 8, 11, 16):
            yield TopKQuantize(ratio, bits)
    for bits in (1, 4, 8, 12, 16):
        yield Quantize(bits, scale="channel")
        for size in (1, 7, 64, 512):
            yield Quantize(bits, scale="group", group_size=size)
        yield TopKQuantize(0.3, bits, scale="group", group_size=13)


def ref_kind(c: Codec) -> Tuple[str, Dict[str, Any]]:
    """The oracle's name and arguments for a codec."""
    if isinstance(c, TopKQuantize):
        return "topk_quantize", {"ratio": c.ratio, "bits": c.bits, "scale": c.scale,
                                 "group_size": c.group_size}
    if isinstance(c, TopK):
        return "topk", {"ratio": c.ratio}
    if isinstance(c, Quantize):
        return "quantize", {"bits": c.bits, "scale": c.scale, "group_size": c.group_size}
    return "identity", {}


def roundtrip(c: Codec, x: Tensor, support: Optional[Tensor] = None,
              crossing: Optional[Crossing] = None) -> Tuple[bytes, Tensor, Optional[Tensor]]:
    """(payload bytes, decoded tensor, support_of) of x."""
    p = c.encode(x, support=support, crossing=crossing)
    return wire(p), c.decode(p, support=support), c.support_of(p)


def index_format_of(p: bytes, ndim: int) -> int:
    return p[3 + 4 * ndim]


def assert_same(host: Tuple[bytes, Tensor, Optional[Tensor]],
                device: Tuple[bytes, Tensor, Optional[Tensor]], what: str) -> None:
    assert device[0] == host[0], what
    assert device[1].dtype == host[1].dtype and torch.equal(device[1], host[1]), what
    assert (device[2] is None) == (host[2] is None), what
    if host[2] is not None:
        assert device[2] is not None and torch.equal(device[2], host[2]), what


# --- the switch ----------------------------------------------------------------------------------

def test_the_switch_selects_the_device_path(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(base, "CPU_CHUNK", 64)
    assert base.on_host(cpu) and list(base.chunk_spans(150, cpu)) == [(0, 64), (64, 128), (128, 150)]
    monkeypatch.setattr(base, "HOST_PATH", False)
    assert not base.on_host(cpu) and list(base.chunk_spans(150, cpu)) == [(0, 150)]
    assert base.chunk_len(150, cpu) == 150 and base.chunk_len(0, cpu) == 0
    monkeypatch.setattr(masks, "np", NoNumpy())
    with pytest.raises(AssertionError, match="numpy"):
        masks.np.packbits  # the guard the device-path tests rely on
    # a whole encode/decode round trip of every codec on the device path calls no numpy
    x = torch.randn(500)
    for c in (Identity(), Quantize(16), TopK(0.01), TopK(0.5), TopKQuantize(0.1, 3)):
        c.decode(c.encode(x))


# --- payloads, decodes and supports: device path == host path == oracle --------------------------

@pytest.mark.parametrize("name", list(inputs()))
def test_every_codec_same_bytes_on_both_paths(paths: Callable, name: str) -> None:
    x = inputs()[name]
    formats = set()
    for c in codecs():
        host, device = paths(lambda: roundtrip(c, x))
        assert_same(host, device, f"{c!r} on {name}")
        kind, kwargs = ref_kind(c)
        assert host[0] == ref_encode(kind, x, **kwargs), f"{c!r} on {name}"
        if isinstance(c, TopK):
            formats.add(index_format_of(host[0], x.dim()))
    if x.numel() >= 300:
        assert formats == {BITMAP, INDICES}, name  # both index formats ran on this input


@pytest.mark.parametrize("name", ["random", "relu", "fp16", "bf16", "transposed"])
def test_support_masks_same_bytes_on_both_paths(paths: Callable, name: str) -> None:
    x = inputs()[name]
    support = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) > 0.4
    for c in (Identity(), Quantize(3), Quantize(12), Quantize(16), TopK(0.02), TopK(0.3),
              TopKQuantize(0.3, 6), TopKQuantize(0.02, 16), Quantize(4, scale="channel"),
              Quantize(5, scale="group", group_size=9),
              TopKQuantize(0.3, 6, scale="group", group_size=5)):
        host, device = paths(lambda: roundtrip(c, x, support))
        assert_same(host, device, f"{c!r} on {name}")
        kind, kwargs = ref_kind(c)
        assert host[0] == ref_encode(kind, x, support=support, **kwargs), f"{c!r} on {name}"


def test_large_tensor_sampled_selection_on_both_paths(paths: Callable) -> None:
    # above select.SMALL: the strided sample brackets the threshold (one piece on the device path)
    x = torch.randn(2 * select.SMALL + 3, generator=torch.Generator().manual_seed(2))
    for c in (TopK(0.001), TopK(0.1), TopKQuantize(0.1, 4), Quantize(16), Quantize(7),
              Quantize(4, scale="group", group_size=100), TopKQuantize(0.1, 3, scale="group")):
        host, device = paths(lambda: roundtrip(c, x))
        assert_same(host, device, repr(c))
        kind, kwargs = ref_kind(c)
        assert host[0] == ref_encode(kind, x, **kwargs), repr(c)


def test_empty_and_non_finite_on_the_device_path(paths: Callable) -> None:
    empty = torch.empty(0, 3)
    for c in (Identity(), Quantize(5), TopK(0.1), TopKQuantize(0.1, 9)):
        host, device = paths(lambda: roundtrip(c, empty))
        assert_same(host, device, repr(c))
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(100)
        x[37] = bad
        for c in (Quantize(8), TopK(0.1), TopKQuantize(0.1, 8)):
            def raises_or_flags() -> str:
                if not base.on_host(x.device):  # fused: flagged on the device, read once a step
                    flag = fused.nonfinite(c.encode(x))
                    return "flagged" if flag is not None and bool(flag) else "missed"
                with pytest.raises(NonFiniteError):
                    c.encode(x)
                return "flagged"
            host, device = paths(raises_or_flags)
            assert host == device == "flagged", repr(c)


# --- the primitives each path implements its own way ---------------------------------------------

@pytest.mark.parametrize("bits", range(1, 17))
def test_code_packing_on_both_paths(paths: Callable, bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    n = 1003
    codes = torch.randint(0, 2 ** bits, (n,), generator=g, dtype=torch.int64)
    want = ref_pack(codes.numpy(), bits)

    def pack_unpack() -> Tuple[bytes, List[int]]:
        out = torch.zeros(packed_size(n, bits), dtype=torch.uint8)
        for start in (0, 400, 808):  # chunks that start at multiples of 8, as the host path's
            stop = {0: 400, 400: 808, 808: n}[start]
            pack_codes_into(codes[start:stop].to(code_dtype(bits)), bits, out, start, n)
        got = [unpack_codes_from(out, bits, n, s, m).tolist() for s, m in ((0, 400), (400, n - 400))]
        return wire(out), got[0] + got[1]

    host, device = paths(pack_unpack)
    assert host == device == (want, codes.tolist())


def test_16_bit_codes_at_an_odd_byte_offset(paths: Callable) -> None:
    codes = torch.tensor([0x1234, 0xFFFF, 0, 0xA5C3], dtype=torch.int32)
    body = torch.zeros(9, dtype=torch.uint8)
    pack_codes_into(codes, 16, body[1:], 0, 4)
    host, device = paths(lambda: unpack_codes_from(body[1:], 16, 4, 0, 4).tolist())
    assert host == device == codes.tolist()


def bitmap_of(mask: Tensor) -> Tensor:
    out = torch.zeros((mask.numel() + 7) // 8, dtype=torch.uint8)
    masks.pack_mask_into(mask, out)
    return out


def test_bitmaps_on_both_paths(paths: Callable) -> None:
    g = torch.Generator().manual_seed(3)
    for n in (1, 7, 8, 9, 64, 1001):
        mask = torch.rand(n, generator=g) > 0.5
        want = ref_pack(mask.numpy(), 1)

        def bitmap() -> Tuple[bytes, List[bool]]:
            packed = bitmap_of(mask)
            return wire(packed), masks.unpack_mask(packed, n).tolist()

        host, device = paths(bitmap)
        assert host == device == (want, mask.tolist())
    # a mask that does not start on an 8-byte boundary of its storage
    storage = torch.rand(40, generator=g) > 0.5
    host_bytes, device_bytes = paths(lambda: wire(bitmap_of(storage[3:35])))
    assert host_bytes == device_bytes == ref_pack(storage[3:35].numpy(), 1)


def test_mask_primitives_on_both_paths(paths: Callable) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randint(-3, 4, (257,), generator=g).float()
    keep = x > 0
    where = torch.tensor([5, 0, 200], dtype=torch.int64)

    def results() -> List[Any]:
        out = torch.empty(257, dtype=torch.bool)
        f = torch.empty(257)
        into = torch.zeros(257)
        masks.copy_into(into, x)
        return [
            masks.minmax(x), masks.minmax(x.half()), masks.magnitude(x[::2]).tolist(),
            masks.cat([x[:3], x[10:12]]).tolist(), masks.invert(keep.clone()).tolist(),
            into.tolist(), masks.put(torch.zeros(257), where, x[:3]).tolist(),
            masks.abs_into(x, f).tolist(), masks.greater(x, 1.0, out).tolist(),
            masks.greater(x, 1.0, out, equal=True).tolist(), masks.count(keep),
            masks.flatnonzero(keep).tolist(), masks.compress(x, keep).tolist(),
            masks.order_stats(x, [0, 100, 256]), masks.zeros(9, torch.bfloat16, x.device).tolist(),
        ]

    host, device = paths(results)
    assert host == device
