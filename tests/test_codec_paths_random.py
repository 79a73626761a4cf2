"""The new codecs on both paths and in small chunks: stochastic rounding, channel/group scales,
RandTopK and the entropy stage write the oracle's bytes (or the same bytes on both paths)."""
from typing import Callable

import pytest
import torch

import edgesplit.codecs.base as base
import edgesplit.codecs.masks as masks
from tests.codec_reference import ref_encode, ref_entropy, ref_topk_mask
from tests.test_codec_paths import assert_same, inputs, paths, roundtrip, wire  # noqa: F401
from edgesplit.codecs import Crossing, Entropy, Identity, Quantize, RandTopK, TopK, TopKQuantize
from edgesplit.codecs.topk import k_for

KEY = 1234


def stochastic(x: torch.Tensor, codec: Quantize) -> bytes:
    return wire(codec.encode(x, crossing=Crossing(key=KEY)))


@pytest.mark.parametrize("name", list(inputs()))
def test_stochastic_rounding_is_the_oracles_on_both_paths(paths: Callable, name: str) -> None:  # noqa: F811
    # u is drawn once per encode from the crossing's generator, before any chunking: the host
    # path's chunks and the device path's single piece add the same numbers
    x = inputs()[name]
    for bits in (1, 2, 4, 8, 9, 16):
        for scale, size in (("tensor", 512), ("channel", 512), ("group", 7)):
            c = Quantize(bits, "stochastic", scale, size)
            host, device = paths(lambda: stochastic(x, c))
            assert host == device == ref_encode("quantize", x, bits=bits, scale=scale,
                                                group_size=size, key=KEY), f"{c!r} on {name}"
        for scale in ("tensor", "group"):
            c = TopKQuantize(0.3, bits, "stochastic", scale, 5)
            host, device = paths(lambda: stochastic(x, c))
            assert host == device == ref_encode("topk_quantize", x, ratio=0.3, bits=bits,
                                                scale=scale, group_size=5, key=KEY), repr(c)


@pytest.mark.parametrize("host_path", [True, False])
def test_small_chunks_give_the_oracles_bytes(monkeypatch: pytest.MonkeyPatch, host_path: bool) -> None:
    # chunks of 64 elements: groups and channels cross chunk ends, the last group is short
    monkeypatch.setattr(base, "CPU_CHUNK", 64)
    monkeypatch.setattr(base, "HOST_PATH", host_path)
    g = torch.Generator().manual_seed(5)
    for x in (torch.randn(1003, generator=g), torch.randn(7, 3, 5, 3, generator=g),
              torch.randn(9, 40, generator=g).half(), torch.randn(300, generator=g).bfloat16()):
        for scale, size in (("channel", 512), ("group", 1), ("group", 13), ("group", 64),
                            ("group", 100), ("group", 4096)):
            for key in (None, 7):
                c = Quantize(5, "nearest" if key is None else "stochastic", scale, size)
                p = c.encode(x, crossing=Crossing(key=key or 0))
                assert wire(p) == ref_encode("quantize", x, bits=5, scale=scale, group_size=size,
                                             key=key), (repr(c), tuple(x.shape))
                y = c.decode(p)
                assert y.dtype == x.dtype and y.shape == x.shape


@pytest.mark.parametrize("name", list(inputs()))
def test_randtopk_same_bytes_on_both_paths(paths: Callable, name: str) -> None:  # noqa: F811
    x = inputs()[name]
    for ratio in (0.01, 0.1, 0.5, 1.0):
        for explore in (0.0, 0.1, 0.5, 1.0):
            c = RandTopK(ratio, explore)
            host, device = paths(lambda: roundtrip(c, x, crossing=Crossing(key=KEY)))
            assert_same(host, device, f"{c!r} on {name}")
            kept = host[2]
            assert kept is not None and int(kept.sum()) == k_for(ratio, x.numel())


def test_randtopk_in_small_chunks_keeps_the_same_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 250, generator=g)
    ties = torch.randint(0, 3, (997,), generator=g).float()  # the cut runs through ties
    want = {id(t): [RandTopK(r, 0.3).encode(t, crossing=Crossing(key=3)) for r in (0.05, 0.4)]
            for t in (x, ties)}
    monkeypatch.setattr(base, "CPU_CHUNK", 64)
    for t in (x, ties):
        got = [RandTopK(r, 0.3).encode(t, crossing=Crossing(key=3)) for r in (0.05, 0.4)]
        assert [wire(p) for p in got] == [wire(p) for p in want[id(t)]]


def test_randtopk_without_exploration_keeps_the_top_k() -> None:
    x = inputs()["relu"]
    for ratio in (0.01, 0.3):
        p, q = RandTopK(ratio, 0.0).encode(x), TopK(ratio).encode(x)
        assert wire(p)[1:] == wire(q)[1:] and wire(p)[0] == 7 and wire(q)[0] == 3  # codec id only
        keep = ref_topk_mask(x.reshape(-1))[:k_for(ratio, x.numel())]
        assert set(torch.nonzero(RandTopK(ratio, 0.0).support_of(p).view(-1)).view(-1).tolist()) \
            == set(keep.tolist())


@pytest.mark.parametrize("method", ["zlib", "zstd"])
def test_entropy_is_the_oracles_on_both_paths(paths: Callable, method: str) -> None:  # noqa: F811
    for name in ("random", "relu", "zeros", "fp16", "transposed"):
        x = inputs()[name]
        for inner, kind, kwargs in ((Identity(), "identity", {}), (Quantize(4), "quantize", {"bits": 4}),
                                    (TopK(0.1), "topk", {"ratio": 0.1}),
                                    (Quantize(3, scale="group", group_size=10), "quantize",
                                     {"bits": 3, "scale": "group", "group_size": 10})):
            c = Entropy(inner, method)
            host, device = paths(lambda: roundtrip(c, x))
            assert_same(host, device, f"{c!r} on {name}")
            assert host[0] == ref_entropy(ref_encode(kind, x, **kwargs), method), f"{c!r} {name}"
            assert torch.equal(host[1], inner.decode(inner.encode(x)))


def test_the_noise_is_exactly_u() -> None:
    # codes of 1.5 + 2**-17 (scale 1): 2 when u >= 0.5 - 2**-17, i.e. s >= -1 with
    # u = (s + 32768.5) / 65536; an offset of 32768 instead would give 1 at each s = -1 (1 in 65536)
    x = torch.full((1 << 20,), 1.5 + 2.0 ** -17)
    x[0], x[1] = 0.0, 3.0
    c = Quantize(2, "stochastic")
    p = c.encode(x, crossing=Crossing(key=KEY))
    assert wire(p) == ref_encode("quantize", x, bits=2, key=KEY)
    codes = c.decode(p)[2:]
    assert set(codes.unique().tolist()) == {1.0, 2.0}
    assert abs(codes.mean().item() - (1 + 32769 / 65536)) < 5 * 0.5 / 1024


def test_first_occurrences_on_both_paths(paths: Callable) -> None:  # noqa: F811
    # the repeats of RandTopK's draws: radix sorts up to 2**15 values on the host path, unique beyond
    g = torch.Generator().manual_seed(8)
    for size, high in ((1, 5), (300, 50), (5000, 2 ** 31 - 1), (5000, 70000), (40000, 30000)):
        x = torch.randint(0, high, (size,), generator=g)
        first: dict = {}
        for i, value in enumerate(x.tolist()):
            first.setdefault(value, i)
        want = (sorted(first), [first[v] for v in sorted(first)])
        host, device = paths(lambda: tuple(t.tolist() for t in masks.first_occurrences(x)))
        assert host == device == want, (size, high)
