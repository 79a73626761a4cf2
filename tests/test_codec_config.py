"""The compressor options and keys of the new codecs: what each builds, the entropy stage around
every codec, and one-line errors that name the key and the allowed values."""
import pytest

from edgesplit.codecs import Entropy, Identity, Quantize, RandTopK, TopK, TopKQuantize
from edgesplit.codecs.build import build_codecs
from edgesplit.config import compose_config
from edgesplit.errors import ConfigError
from edgesplit.validate import validate

NAMED = {  # option: (bits, rounding, scale)
    "quantize8": (8, "nearest", "tensor"), "quantize8_sr": (8, "stochastic", "tensor"),
    "quantize4": (4, "nearest", "tensor"), "quantize4_sr": (4, "stochastic", "tensor"),
    "quantize4_channel": (4, "nearest", "channel"), "quantize4_group": (4, "nearest", "group"),
    "quantize4_sr_group": (4, "stochastic", "group"), "quantize2": (2, "nearest", "tensor"),
    "quantize2_sr": (2, "stochastic", "tensor"), "quantize2_sr_group": (2, "stochastic", "group"),
    "quantize1": (1, "nearest", "tensor"), "quantize1_sr": (1, "stochastic", "tensor"),
    "quantize1_sr_group": (1, "stochastic", "group"),
}


def built(*overrides: str) -> dict:
    cfg = compose_config(list(overrides))
    validate(cfg)
    return build_codecs(cfg.compressor)


@pytest.mark.parametrize("option", list(NAMED))
def test_named_quantize_choices(option: str) -> None:
    bits, rounding, scale = NAMED[option]
    cfg = compose_config([f"compressor={option}"])
    assert cfg.compressor.name == option and cfg.compressor.group_size == 512
    for boundary in built(f"compressor={option}").values():
        for codec in (boundary.activation, boundary.gradient):  # the gradient: the same keys
            assert isinstance(codec, Quantize)
            assert (codec.bits, codec.rounding, codec.scale, codec.group_size) == \
                (bits, rounding, scale, 512)
            assert codec.random == (rounding == "stochastic")


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_sr_grad_rounds_the_gradient_stochastically_with_group_scales_and_the_activation_to_nearest(
        bits: int) -> None:
    for boundary in built(f"compressor=quantize{bits}_sr_grad", "compressor.group_size=64").values():
        act, grad = boundary.activation, boundary.gradient
        assert (act.bits, act.rounding, act.scale, act.random) == (bits, "nearest", "tensor", False)
        assert (grad.bits, grad.rounding, grad.scale, grad.group_size) == (bits, "stochastic", "group", 64)


def test_the_keys_reach_every_quantizing_codec() -> None:
    keys = ["compressor.rounding=stochastic", "compressor.scale=group", "compressor.group_size=64"]
    q = built("compressor=quantize", "compressor.bits=3", *keys)["back"]
    assert (q.gradient.bits, q.gradient.rounding, q.gradient.scale, q.gradient.group_size) == \
        (3, "stochastic", "group", 64)
    pq = built("compressor=prune_quantize", *keys)["front"]
    assert isinstance(pq.activation, TopKQuantize) and pq.reuses_support
    assert (pq.activation.rounding, pq.activation.scale, pq.activation.group_size) == \
        ("stochastic", "group", 64)
    assert (pq.gradient.rounding, pq.gradient.scale, pq.gradient.group_size) == \
        ("stochastic", "group", 64)


def test_randtopk_option() -> None:
    cfg = compose_config(["compressor=randtopk"])
    assert (cfg.compressor.ratio, cfg.compressor.explore, cfg.compressor.entropy) == (0.1, 0.1, "none")
    front = built("compressor=randtopk", "compressor.ratio=0.05", "compressor.explore=0.3")["front"]
    assert isinstance(front.activation, RandTopK) and front.activation.random
    assert (front.activation.ratio, front.activation.explore) == (0.05, 0.3)
    assert isinstance(front.gradient, Identity) and front.reuses_support


@pytest.mark.parametrize("option", ["none", "prune", "quantize", "prune_quantize", "randtopk",
                                    "quantize4_sr_group"])
@pytest.mark.parametrize("method", ["zlib", "zstd"])
def test_entropy_wraps_every_codec(option: str, method: str) -> None:
    plain = built(f"compressor={option}")
    wrapped = built(f"compressor={option}", f"compressor.entropy={method}")
    for boundary in ("front", "back"):
        for role in ("activation", "gradient"):
            codec = getattr(wrapped[boundary], role)
            assert isinstance(codec, Entropy) and codec.method == method
            assert repr(codec.inner) == repr(getattr(plain[boundary], role))
            assert codec.random == codec.inner.random


def test_entropy_wraps_a_per_boundary_codec_too() -> None:
    codecs = built("compressor=quantize", "compressor.entropy=zstd",
                   "compressor.front={activation: {_target_: edgesplit.codecs.TopK, ratio: 0.2}}")
    assert isinstance(codecs["front"].activation, Entropy)
    assert isinstance(codecs["front"].activation.inner, TopK)
    assert isinstance(codecs["back"].activation.inner, Quantize)


@pytest.mark.parametrize("overrides, message", [
    (["compressor=quantize", "compressor.rounding=up"],
     "compressor.rounding='up' is invalid: allowed: nearest, stochastic"),
    (["compressor=prune_quantize", "compressor.rounding=floor"],
     "compressor.rounding='floor' is invalid: allowed: nearest, stochastic"),
    (["compressor=quantize4", "compressor.scale=row"],
     "compressor.scale='row' is invalid: allowed: tensor, channel, group"),
    (["compressor=prune_quantize", "compressor.scale=channel"],
     "compressor.scale='channel' is invalid: allowed with pruning: tensor, group"),
    (["compressor=quantize", "compressor.group_size=0"],
     "compressor.group_size=0 is invalid: must be a positive int"),
    (["compressor=quantize2_sr_group", "compressor.group_size=-8"],
     "compressor.group_size=-8 is invalid: must be a positive int"),
    (["compressor=randtopk", "compressor.explore=1.5"],
     "compressor.explore=1.5 is invalid: must be in [0, 1]"),
    (["compressor=randtopk", "compressor.ratio=0"], "compressor.ratio=0.0 is invalid: must be in (0, 1]"),
    (["compressor=none", "compressor.entropy=lz4"],
     "compressor.entropy='lz4' is invalid: allowed: none, zlib, zstd"),
    (["compressor=prune", "compressor.entropy=gzip"],
     "compressor.entropy='gzip' is invalid: allowed: none, zlib, zstd"),
])
def test_invalid_keys_name_the_key_and_the_allowed_values(overrides: list, message: str) -> None:
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)
