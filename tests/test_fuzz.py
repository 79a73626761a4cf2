"""Fuzzing every codec's decoder with random and mutated payloads: only clean ValueError/TypeError,
nothing of a declared size allocated before it is checked, and no structural field changed
silently.

A decoder cannot see every change: a different dtype code of quantized values, a shape of the
same element count, another offset or scale, or bits whose codes fit the same bytes all decode to
a well-formed (wrong) tensor. Those are caught by the per-message HMAC of the dist transport
(tests/test_dist_units.py), which checks a message before any decoder sees it."""
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesplit.codecs import Entropy, Identity, Quantize, RandTopK, TopK, TopKQuantize
from edgesplit.codecs.header import CODE_DTYPES

# small ratios send int32 indices, larger ones a bitmap
CODECS = [Identity(), Quantize(1), Quantize(8), Quantize(12), Quantize(16), TopK(0.01), TopK(0.1),
          TopK(0.5), TopKQuantize(0.02, 3), TopKQuantize(0.1, 4), TopKQuantize(0.3, 9),
          Quantize(4, "stochastic"), Quantize(2, scale="channel"), Quantize(5, "stochastic", "group", 7),
          Quantize(16, scale="group", group_size=64), TopKQuantize(0.2, 4, "stochastic", "group", 5),
          RandTopK(0.01, 0.5), RandTopK(0.3, 0.1), Entropy(Quantize(4), "zlib"),
          Entropy(TopK(0.1), "zstd"), Entropy(Quantize(3, scale="group", group_size=8), "zstd")]
QUANTIZED = (Quantize, TopKQuantize)
GROUPED = [c for c in CODECS if isinstance(c, QUANTIZED) and c.scale != "tensor"]
DTYPES = list(CODE_DTYPES.values())
LIMIT = 1 << 22  # elements: far beyond any payload here, far below a declared size's worth
SETTINGS = settings(max_examples=800, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _numel(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = tuple(size[0])
    return math.prod(int(s) for s in size)


@pytest.fixture
def bounded_allocation(monkeypatch):
    """Fail the test when a decoder asks for more than LIMIT elements at once."""
    for module, name in ((torch, "empty"), (torch, "zeros"), (np, "zeros")):
        real = getattr(module, name)

        def guarded(*size, _real=real, **kw):
            assert _numel(size) <= LIMIT, f"allocation of {size} elements"
            return _real(*size, **kw)
        monkeypatch.setattr(module, name, guarded)


def decode(codec, payload):
    """The decoded tensor, or None after a clean error (a one-line message)."""
    try:
        return codec.decode(payload)
    except (ValueError, TypeError) as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return None


def _header_id(codec):
    """The codec id a payload of this codec starts with."""
    if isinstance(codec, Entropy):
        return 8
    if isinstance(codec, TopK):  # TopK, TopKQuantize (and its group scales), RandTopK
        return codec.code
    if isinstance(codec, Quantize):
        return 2 if codec.scale == "tensor" else 5
    return 1


def _header_layout(payload):
    """{field: (offset, struct format)} of a payload's header fields."""
    raw = bytes(payload.tolist())
    if raw[0] == 8:  # Entropy: codec id, method, inner size, then the compressed stream
        return {"codec": (0, "B"), "method": (1, "B"), "size": (2, "<I")}
    ndim = raw[2]
    fields = {"codec": (0, "B"), "ndim": (2, "B"), "dim": (3, "<I")}
    at = 3 + 4 * ndim
    if raw[0] in (3, 4, 6, 7):  # TopK, TopKQuantize, RandTopK: index format, k[, bits, ...]
        fields.update(format=(at, "B"), k=(at + 1, "<I"))
        at += 5
    if raw[0] in (2, 4):
        fields.update(bits=(at, "B"), offset=(at + 1, "<f"), scale=(at + 5, "<f"))
    if raw[0] == 5:  # per channel/group: bits, mode, channels or group size; offsets, scales
        fields.update(bits=(at, "B"), mode=(at + 1, "B"), group=(at + 2, "<I"))
    if raw[0] == 6:
        fields.update(bits=(at, "B"), group=(at + 1, "<I"))
    return fields


tensors = st.tuples(
    st.lists(st.integers(1, 24), min_size=1, max_size=4),
    st.sampled_from(DTYPES),
    st.integers(0, 2 ** 16),
)


def _tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


@SETTINGS
@given(codec=st.sampled_from(CODECS), data=st.binary(max_size=300), prefix=st.booleans())
def test_random_bytes_fail_cleanly(bounded_allocation, codec, data, prefix):
    if prefix:  # past the codec id check, into the fields
        data = bytes([_header_id(codec)]) + data
    decode(codec, torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
           else torch.empty(0, dtype=torch.uint8))


@SETTINGS
@given(codec=st.sampled_from(CODECS), t=tensors, where=st.integers(0, 10 ** 6),
       byte=st.integers(0, 255), how=st.sampled_from(["set", "truncate", "append"]))
def test_mutated_bytes_fail_cleanly(bounded_allocation, codec, t, where, byte, how):
    payload = codec.encode(_tensor(*t))
    raw = bytearray(payload.tolist())
    if how == "set":
        raw[where % len(raw)] = byte
    elif how == "truncate":
        raw = raw[:where % len(raw)]
    else:
        raw += bytes([byte]) * (1 + where % 9)
    mutated = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    out = decode(codec, mutated)
    if how != "set" and out is not None:
        pytest.fail(f"{codec!r} accepted a payload {how}d to {len(raw)} bytes")
    if out is not None and isinstance(codec, QUANTIZED):  # codes always decode to finite values
        assert bool(torch.isfinite(out).all()), f"{codec!r} decoded a mutated payload to NaN/inf"


@SETTINGS
@given(codec=st.sampled_from(CODECS), t=tensors,
       field=st.sampled_from(["codec", "ndim", "dim", "format", "k", "bits", "mode", "group",
                              "method", "size"]),
       value=st.one_of(st.integers(0, 2 ** 32 - 1), st.integers(2 ** 20, 2 ** 31)))
def test_structural_fields_are_never_changed_silently(bounded_allocation, codec, t, field, value):
    x = _tensor(*t)
    payload = codec.encode(x)
    layout = _header_layout(payload)
    if field not in layout:
        return
    at, fmt = layout[field]
    old = struct.unpack_from(fmt, bytes(payload.tolist()), at)[0]
    new = value % (1 << (8 * struct.calcsize(fmt)))
    if new == old:
        return
    raw = bytearray(payload.tolist())
    struct.pack_into(fmt, raw, at, new)
    out = decode(codec, torch.frombuffer(raw, dtype=torch.uint8))
    if out is None:
        return
    if field == "dim" and isinstance(codec, TopK):  # a bitmap of a few more or fewer elements
        assert out.numel() <= 8 * len(raw) and out.numel() // 2 <= x.numel() <= 2 * out.numel()
        return  # and the same k may pass as the HMAC's case
    if field == "bits":  # codes of other widths can fill the same bytes: the HMAC's case
        n = int(struct.unpack_from("<I", raw, at - 4)[0]) if layout.get("k") else x.numel()
        assert (n * old + 7) // 8 == (n * new + 7) // 8, f"bits {old} -> {new} accepted"
        return
    pytest.fail(f"{codec!r}: field {field} changed {old} -> {new} and the payload still decoded "
                f"to shape {tuple(out.shape)}")


@SETTINGS
@given(codec=st.sampled_from([c for c in CODECS if isinstance(c, QUANTIZED) and c.scale == "tensor"]),
       t=tensors, field=st.sampled_from(["offset", "scale"]),
       value=st.floats(allow_nan=True, allow_infinity=True, width=32))
def test_quantization_fields_decode_finite_or_are_refused(codec, t, field, value):
    payload = codec.encode(_tensor(*t))
    at, fmt = _header_layout(payload)[field]
    raw = bytearray(payload.tolist())
    struct.pack_into(fmt, raw, at, value)
    out = decode(codec, torch.frombuffer(raw, dtype=torch.uint8))
    if not math.isfinite(value) or (field == "scale" and value < 0):
        assert out is None, f"{codec!r} accepted {field} {value}"
    elif out is not None:
        assert bool(torch.isfinite(out).all()), f"{codec!r}: {field} {value} decoded to NaN/inf"


@SETTINGS
@given(codec=st.sampled_from(GROUPED), t=tensors, which=st.integers(0, 10 ** 6),
       field=st.sampled_from(["offset", "scale"]),
       value=st.floats(allow_nan=True, allow_infinity=True, width=32))
def test_group_parameters_decode_finite_or_are_refused(codec, t, which, field, value):
    """Any group's offset or scale set to any float: a finite decode or a clean refusal."""
    payload = codec.encode(_tensor(*t))
    raw = bytearray(payload.tolist())
    layout = _header_layout(payload)
    start = layout["group"][0] + 4  # the body: count offsets, then count scales
    if raw[0] == 6:  # after the index section: its size follows from the format and k
        k = struct.unpack_from("<I", raw, layout["k"][0])[0]
        n = math.prod(struct.unpack_from(f"<{raw[2]}I", raw, 3))
        start += 4 * k if raw[layout["format"][0]] == 1 else (n + 7) // 8
        count = -(-k // codec.group_size)
    elif raw[layout["mode"][0]] == 1:
        count = struct.unpack_from("<I", raw, layout["group"][0])[0]
    else:
        count = -(-math.prod(struct.unpack_from(f"<{raw[2]}I", raw, 3)) // codec.group_size)
    if count == 0:
        return
    at = start + 4 * (which % count) + (4 * count if field == "scale" else 0)
    struct.pack_into("<f", raw, at, value)
    out = decode(codec, torch.frombuffer(raw, dtype=torch.uint8))
    if not math.isfinite(value) or (field == "scale" and value < 0):
        assert out is None, f"{codec!r} accepted {field} {value}"
    elif out is not None:
        assert bool(torch.isfinite(out).all()), f"{codec!r}: {field} {value} decoded to NaN/inf"
