"""RandTopK: how many entries it keeps and which, uniform exploration, determinism, the wire
format, the gradient rule and the contract's edge cases."""
import math
import struct

import pytest
import torch

from tests.codec_reference import ref_pack, ref_topk_mask
from edgesplit.boundary.boundary import Boundary
from edgesplit.boundary.layer import BoundaryLayer
from edgesplit.codecs import Crossing, Identity, NonFiniteError, RandTopK, TopK
from edgesplit.codecs.randtopk import explore_count
from edgesplit.codecs.topk import k_for
from edgesplit.boundary.meter import CommMeter
from edgesplit.codecs.build import BoundaryCodecs


def hdr(ndim: int) -> int:
    return 3 + 4 * ndim


def kept(c: RandTopK, x: torch.Tensor, key: int) -> torch.Tensor:
    return c.support_of(c.encode(x, crossing=Crossing(key=key))).reshape(-1)


def top_set(x: torch.Tensor, count: int) -> torch.Tensor:
    """The mask of the `count` largest |x| (ties: lowest index), flat."""
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[ref_topk_mask(x.reshape(-1))[:count]] = True
    return mask


@pytest.mark.parametrize("ratio, explore", [(0.1, 0.1), (0.25, 0.2), (0.5, 0.5), (0.03, 0.5),
                                            (0.2, 1.0), (0.9, 0.3), (0.1, 0.0)])
def test_keeps_the_top_and_explores_outside_it(ratio: float, explore: float) -> None:
    g = torch.Generator().manual_seed(1)
    for x in (torch.randn(16, 50, generator=g), torch.randn(8, 4, 6, 6, generator=g).relu(),
              torch.randint(-2, 3, (900,), generator=g).float()):  # ties at every cut
        c = RandTopK(ratio, explore)
        n, k = x.numel(), k_for(ratio, x.numel())
        extra = explore_count(explore, k)
        top = top_set(x, k - extra)
        for key in range(5):
            mask = kept(c, x, key)
            assert int(mask.sum()) == k
            assert bool(mask[top].all())  # the top k - extra, ties by lowest index
            assert int((mask & ~top).sum()) == extra  # the explored ones are outside it
        p = c.encode(x, crossing=Crossing(key=0))
        index = 4 * k if 4 * k < (n + 7) // 8 else (n + 7) // 8  # int32 indices or a bitmap
        assert p.numel() == hdr(x.dim()) + 5 + index + 4 * k
        assert torch.equal(c.decode(p), torch.where(c.support_of(p), x, 0))


def test_explore_counts() -> None:
    assert [explore_count(0.1, k) for k in (1, 9, 10, 838861)] == [0, 0, 1, 83886]
    assert explore_count(0.7, 10) == 7 and explore_count(1.0, 5) == 5 and explore_count(0.0, 5) == 0


@pytest.mark.parametrize("ratio, explore", [(0.25, 0.2), (0.5, 0.9)])  # sparse and dense draws
def test_exploration_is_uniform_outside_the_top_set(ratio: float, explore: float) -> None:
    x = torch.randn(200, generator=torch.Generator().manual_seed(2))
    c = RandTopK(ratio, explore)
    k = k_for(ratio, 200)
    extra = explore_count(explore, k)
    top = top_set(x, k - extra)
    runs = 2000
    hits = torch.stack([kept(c, x, key) for key in range(runs)]).sum(0)
    assert bool((hits[top] == runs).all())
    outside = hits[~top].double()
    expected = runs * extra / outside.numel()
    assert outside.sum().item() == runs * extra
    # chi-square over the outside positions, df = m - 1: far below mean + 6 sd is uniform enough
    m = outside.numel()
    chi2 = ((outside - expected) ** 2 / expected).sum().item()
    assert chi2 < (m - 1) + 6 * math.sqrt(2 * (m - 1)), chi2
    # and not a fixed subset: every outside position is explored now and then
    assert bool((outside > 0).all())


def test_draws_follow_the_crossing_key() -> None:
    x = torch.randn(30, 40, generator=torch.Generator().manual_seed(3))
    c = RandTopK(0.1, 0.5)
    assert c.random and not TopK(0.1).random
    a = c.encode(x, crossing=Crossing(key=5))
    assert torch.equal(a, c.encode(x, crossing=Crossing(key=5)))
    assert not torch.equal(a, c.encode(x, crossing=Crossing(key=6)))
    assert torch.equal(c.encode(x), c.encode(x, crossing=Crossing(key=0)))


def test_wire_format_is_topks() -> None:
    x = torch.tensor([0.5, -3.0, 1.0, 2.0, -0.1, 0.0, 4.0, -2.0])
    c = RandTopK(0.5, 0.5)  # k = 4: the top 2 (4.0, -3.0) and 2 of the other 6
    p = c.encode(x, crossing=Crossing(key=1))
    raw = p.numpy().tobytes()
    assert raw[0] == 7 and p.numel() == hdr(1) + 5 + 1 + 4 * 4
    fmt, k = struct.unpack_from("<BI", raw, hdr(1))
    mask = c.support_of(p)
    assert (fmt, k) == (0, 4) and bool(mask[1]) and bool(mask[6])
    assert raw[hdr(1) + 5:hdr(1) + 6] == ref_pack(mask.numpy(), 1)
    assert struct.unpack_from("<4f", raw, hdr(1) + 6) == tuple(x[mask].tolist())
    sparse = torch.randn(10000, generator=torch.Generator().manual_seed(4))
    q = RandTopK(0.01, 0.3).encode(sparse)  # 100 kept: 400 B of indices < 1250 B of bitmap
    fmt, k = struct.unpack_from("<BI", q.numpy().tobytes(), hdr(1))
    assert (fmt, k) == (1, 100) and q.numel() == hdr(1) + 5 + 400 + 400
    with pytest.raises(ValueError, match="made by codec id 7"):
        TopK(0.01).decode(q)


class Recording(RandTopK):
    """RandTopK that keeps the payloads it sends."""

    def __init__(self, ratio: float, explore: float) -> None:
        super().__init__(ratio, explore)
        self.sent: list = []

    def encode(self, x: torch.Tensor, support=None, crossing=None) -> torch.Tensor:
        self.sent.append(super().encode(x, support, crossing))
        return self.sent[-1]


def test_gradient_reuses_the_forward_support() -> None:
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    x.requires_grad_(True)
    codec = Recording(0.3, 0.5)
    boundary = Boundary("front", BoundaryCodecs(codec, Identity(), reuses_support=True), CommMeter())
    boundary.new_step([torch.arange(5)])  # a training step: a random codec's crossing needs its ids
    g = torch.randn(5, 8, dtype=torch.float64)
    BoundaryLayer(boundary)(x).backward(g)
    mask = codec.support_of(codec.sent[0])  # what this crossing's draws kept
    assert int(mask.sum()) == 12 and torch.equal(x.grad, g * mask)


def test_edge_cases() -> None:
    c = RandTopK(0.5, 0.5)
    for x in (torch.zeros(3, 5), torch.full((17,), 7.25), torch.randn(1), torch.empty(0, 3)):
        p = c.encode(x, crossing=Crossing(key=2))
        y = c.decode(p)
        assert y.shape == x.shape and int(c.support_of(p).sum()) == k_for(0.5, x.numel())
        assert torch.equal(y, torch.where(c.support_of(p), x, 0))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = torch.randn(6, 40, generator=torch.Generator().manual_seed(5)).to(dtype)
        p = c.encode(x, crossing=Crossing(key=3))
        assert p.numel() == hdr(2) + 5 + 30 + 120 * x.element_size()
        assert torch.equal(c.decode(p), torch.where(c.support_of(p), x, 0))
    x = torch.randn(30, 20, generator=torch.Generator().manual_seed(6)).t()
    assert torch.equal(c.encode(x, crossing=Crossing(key=4)),
                       c.encode(x.contiguous(), crossing=Crossing(key=4)))
    for bad in (float("nan"), float("inf")):
        z = torch.randn(100)
        z[3] = bad
        with pytest.raises(NonFiniteError, match="NaN or inf"):
            c.encode(z)


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.1, "explore": 1.5}, "RandTopK: explore must be in [0, 1], got 1.5"),
    ({"ratio": 0.1, "explore": -0.1}, "RandTopK: explore must be in [0, 1], got -0.1"),
    ({"ratio": 0.1, "explore": "a"}, "RandTopK: explore must be in [0, 1], got 'a'"),
    ({"ratio": 0, "explore": 0.1}, "RandTopK: ratio must be in (0, 1], got 0"),
])
def test_invalid_args(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        RandTopK(**kwargs)
    assert str(err.value) == message
