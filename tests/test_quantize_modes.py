"""Stochastic rounding and per-channel/per-group scales: sizes, error bounds, bias, determinism and
the contract's edge cases (constant, zero, NaN, tiny, fp16/bf16, non-contiguous)."""
import math
import struct

import pytest
import torch

from edgesplit.codecs import Crossing, NonFiniteError, Quantize, TopK, TopKQuantize

EPS = torch.finfo(torch.float32).eps


def hdr(ndim: int) -> int:
    return 3 + 4 * ndim


def params(p: torch.Tensor, ndim: int, count: int, fields: int = 6) -> tuple:
    """(offsets, scales) of a per-channel/per-group payload (after `fields` bytes of fields)."""
    raw = p.numpy().tobytes()
    at = hdr(ndim) + fields
    offsets = torch.tensor(struct.unpack_from(f"<{count}f", raw, at))
    return offsets, torch.tensor(struct.unpack_from(f"<{count}f", raw, at + 4 * count))


def expand(x: torch.Tensor, scale: str, size: int, values: torch.Tensor) -> torch.Tensor:
    """Each element's group parameter (values per channel or per group), in x's shape."""
    if scale == "channel" and x.dim() >= 2:
        return values.view(1, -1, *[1] * (x.dim() - 2)).expand(x.shape)
    if scale == "channel":  # 1-D: one channel
        return values.expand(x.shape)
    return values.repeat_interleave(size)[:x.numel()].view(x.shape)


CASES = [((8, 6, 5, 5), "channel", 512, 6), ((8, 6, 5, 5), "group", 512, 3),
         ((8, 6, 5, 5), "group", 7, 172), ((33, 17), "channel", 512, 17), ((1000,), "channel", 512, 1),
         ((1000,), "group", 64, 16)]


@pytest.mark.parametrize("shape, scale, size, count", CASES)
@pytest.mark.parametrize("bits", [1, 2, 4, 8, 13])
def test_group_sizes_and_error_bounds(shape: tuple, scale: str, size: int, count: int,
                                      bits: int) -> None:
    # channel = dim 1 (33x17: 17 feature columns; 1-D: one channel), group = runs of `size`
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(bits)) * 3
    x.view(-1)[:50] += 40  # groups of very different ranges
    n = x.numel()
    for rounding in ("nearest", "stochastic"):
        c = Quantize(bits, rounding, scale, size)
        p = c.encode(x, crossing=Crossing(key=9))
        assert p.numel() == hdr(len(shape)) + 6 + 8 * count + math.ceil(n * bits / 8)
        offsets, scales = params(p, len(shape), count)
        y = c.decode(p)
        off, sc = expand(x, scale, size, offsets), expand(x, scale, size, scales)
        assert torch.equal(off, torch.minimum(off, x))  # offset = the group's min
        err = (y - x).abs()
        fp = 4 * EPS * x.abs().max()
        if rounding == "nearest":
            assert bool((err <= sc / 2 + fp).all())
        else:
            assert bool((err < sc + fp).all())
        # a per-group scale is finer than the tensor's wherever the group's range is smaller
        whole = (x.max() - x.min()) / (2 ** bits - 1)
        assert bool((scales <= whole * (1 + 1e-6)).all())


def test_channel_means_dim_1() -> None:
    x = torch.zeros(4, 3, 2)
    x[:, 0] = 1.0  # channel 0 constant, channel 1 in [0, 3], channel 2 in [-2, 2]
    x[:, 1] = torch.arange(8.0).view(4, 2) * 3 / 7
    x[:, 2] = torch.linspace(-2, 2, 8).view(4, 2)
    p = Quantize(2, scale="channel").encode(x)
    offsets, scales = params(p, 3, 3)
    assert offsets.tolist() == [1.0, 0.0, -2.0]
    assert scales.tolist() == pytest.approx([0.0, 1.0, 4 / 3])
    assert torch.equal(Quantize(2, scale="channel").decode(p)[:, 0], x[:, 0])  # exact constant


def test_stochastic_rounding_is_unbiased_and_nearest_is_not() -> None:
    # codes of 1.4 with scale 1: nearest always 1 (error -0.4), stochastic 1 or 2, mean 1.4
    x = torch.full((1000,), 1.4)
    x[0], x[1] = 0.0, 3.0  # min 0, max 3: 2 bits give scale 1
    nearest = Quantize(2).decode(Quantize(2).encode(x))[2:]
    assert nearest.sub(1.4).mean().item() == pytest.approx(-0.4, abs=1e-6)
    for scale in ("tensor", "group"):
        c = Quantize(2, "stochastic", scale, 4096)
        errors = torch.stack([c.decode(c.encode(x, crossing=Crossing(key=k)))[2:] - 1.4
                              for k in range(200)])
        assert set(errors.add(1.4).round().unique().tolist()) == {1.0, 2.0}
        # 199600 codes, each with variance 0.24: the mean is 0 within 5 standard errors
        assert abs(errors.mean().item()) < 5 * math.sqrt(0.24 / errors.numel())


def test_stochastic_rounding_is_unbiased_on_random_data() -> None:
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    for c in (Quantize(3, "stochastic"), Quantize(3, "stochastic", "group", 100),
              TopKQuantize(0.5, 2, "stochastic"), TopKQuantize(0.5, 2, "stochastic", "group", 50)):
        runs = torch.stack([c.decode(c.encode(x, crossing=Crossing(key=k))) for k in range(300)])
        kept = runs[0] != 0 if isinstance(c, TopK) else torch.ones_like(x, dtype=torch.bool)
        mean_error = (runs.mean(0) - x)[kept]
        step = (x.max() - x.min()).item() / (2 ** c.bits - 1)
        # per element: variance <= step^2 / 4 over 300 draws; the average over elements is tighter
        assert mean_error.abs().max().item() < 5 * step / 2 / math.sqrt(300)
        assert abs(mean_error.mean().item()) < 5 * step / 2 / math.sqrt(300 * kept.sum().item())


def test_draws_are_seeded_by_the_crossing_key() -> None:
    x = torch.randn(40, 50, generator=torch.Generator().manual_seed(4))
    for c in (Quantize(4, "stochastic"), Quantize(4, "stochastic", "channel"),
              TopKQuantize(0.2, 3, "stochastic", "group", 16)):
        assert c.random
        a, b = c.encode(x, crossing=Crossing(key=11)), c.encode(x, crossing=Crossing(key=11))
        assert torch.equal(a, b)
        assert not torch.equal(a, c.encode(x, crossing=Crossing(key=12)))
        assert torch.equal(c.encode(x), c.encode(x, crossing=Crossing(key=0)))  # None: key 0
    for c in (Quantize(4), Quantize(4, scale="group"), TopKQuantize(0.2, 3)):
        assert not c.random
        assert torch.equal(c.encode(x, crossing=Crossing(key=11)), c.encode(x))


@pytest.mark.parametrize("c", [Quantize(3, "stochastic"), Quantize(3, scale="channel"),
                               Quantize(3, "stochastic", "group", 5),
                               TopKQuantize(0.5, 3, "stochastic", "group", 3)], ids=repr)
def test_edge_cases(c: Quantize) -> None:
    for x in (torch.zeros(3, 5), torch.full((4, 17), 7.25), torch.full((2, 4), -1e-30),
              torch.randn(1), torch.empty(0, 3), torch.randn(2, 0, 4)):
        p = c.encode(x, crossing=Crossing(key=1))
        y = c.decode(p)
        assert y.shape == x.shape and y.dtype == x.dtype
        kept = c.support_of(p)
        if kept is not None:  # top-k: the kept entries (the first, on ties), zeros elsewhere
            assert int(kept.sum()) == math.ceil(x.numel() / 2) and bool((y[~kept] == 0).all())
            x, y = x[kept], y[kept]
        if x.numel() and bool((x == x.reshape(-1)[0]).all()):
            assert torch.equal(y, x)  # a constant decodes exactly, whatever the draw
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(6, 40, generator=torch.Generator().manual_seed(5)).to(dtype)
        y = c.decode(c.encode(x, crossing=Crossing(key=2)))
        assert y.dtype == dtype and y.shape == x.shape
        step = (x.float().max() - x.float().min()).item() / 7
        assert (y.float() - x.float()).abs().max().item() < step + 0.02
    x = torch.randn(30, 20, generator=torch.Generator().manual_seed(6)).t()
    assert torch.equal(c.encode(x, crossing=Crossing(key=3)),
                       c.encode(x.contiguous(), crossing=Crossing(key=3)))
    for bad in (float("nan"), float("inf"), float("-inf")):
        z = torch.randn(100)
        z[57] = bad
        with pytest.raises(NonFiniteError, match="NaN or inf") as err:
            c.encode(z)
        assert "\n" not in str(err.value)


def test_a_wide_fp16_range_with_a_negative_offset_decodes() -> None:
    # offset -60000 and the last code at +60000 are finite in fp16; |offset| + range is not
    x = torch.tensor([-60000.0, 60000.0, 10.0]).half()
    for c in (Quantize(8), Quantize(8, scale="group", group_size=2), Quantize(8, "stochastic")):
        y = c.decode(c.encode(x))
        assert y.dtype == torch.float16 and y[0].item() == -60000.0
        assert abs(y[1].item() - 60000.0) <= 32


def test_support_with_channel_and_group_scales() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 25, generator=g)
    support = torch.rand(4, 25, generator=g) > 0.6
    count = int(support.sum())
    for scale, groups in (("channel", 1), ("group", math.ceil(count / 10))):  # x[support] is 1-D
        c = Quantize(5, scale=scale, group_size=10)
        p = c.encode(x, support=support)
        assert p.numel() == hdr(1) + 6 + 8 * groups + math.ceil(count * 5 / 8)
        y = c.decode(p, support=support)
        assert torch.equal(y[~support], torch.zeros(int((~support).sum())))
        assert (y - x)[support].abs().max().item() <= (x.max() - x.min()).item() / 31 / 2 + 1e-6


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": 4, "rounding": "up"}, "Quantize: rounding must be one of nearest, stochastic, got 'up'"),
    ({"bits": 4, "scale": "row"}, "Quantize: scale must be one of tensor, channel, group, got 'row'"),
    ({"bits": 4, "group_size": 0}, "Quantize: group_size must be a positive int, got 0"),
    ({"bits": 4, "group_size": 2.5}, "Quantize: group_size must be a positive int, got 2.5"),
])
def test_invalid_quantize_args(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        Quantize(**kwargs)
    assert str(err.value) == message


def test_prune_quantize_has_no_channel_scale() -> None:
    with pytest.raises(ValueError, match="TopKQuantize: scale must be one of tensor, group, got 'channel'"):
        TopKQuantize(0.1, 4, scale="channel")


def test_a_payload_of_another_scale_mode_is_refused() -> None:
    x = torch.randn(4, 6, 5)
    p = Quantize(4, scale="group", group_size=8).encode(x)
    with pytest.raises(ValueError, match="scale mode is 2, this codec's scale=channel"):
        Quantize(4, scale="channel").decode(p)
    with pytest.raises(ValueError, match="group size is 8, expected 16"):
        Quantize(4, scale="group", group_size=16).decode(p)
    with pytest.raises(ValueError, match="made by codec id 5"):
        Quantize(4).decode(p)
    q = TopKQuantize(0.5, 4, scale="group", group_size=8).encode(x)
    with pytest.raises(ValueError, match="group size is 8, expected 9"):
        TopKQuantize(0.5, 4, scale="group", group_size=9).decode(q)
